#!/usr/bin/env node
// cli/main.ts: `deepseek-stream`, the command-line client. Streams one answer to stdout or a
// file, straight from DeepSeek (DEEPSEEK_API_KEY) or through a running proxy (--server), with a
// progress line on a terminal, Ctrl-C that keeps the partial file, and --resume to finish it.

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { streamChat } from '../library';
import { sign, signingPayload } from '../middleware/auth';
import type { ChatMessage } from '../upstream/request';

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_INTERRUPTED = 130;

const USAGE = `usage: deepseek-stream [options] [prompt]

Streams a DeepSeek answer to stdout (or -o FILE). The prompt is the argument, or stdin.

options:
  -o, --output FILE   write the answer to FILE (kept on Ctrl-C; see --resume)
  --server URL        go through a running deepseek-stream-proxy instead of DeepSeek
  --api-key KEY       with --server: the proxy's client key (sent as Authorization: Bearer)
  --signing-secret S  with --server: sign each request with the proxy's SIGNING_SECRET
  --model NAME        model (default: the server's / deepseek-v4-flash)
  --system TEXT       a system message
  --thinking          thinking mode on (--no-thinking: off)
  --resume            continue a partial FILE instead of starting again
  -h, --help          this text
  --version           the version

environment: DEEPSEEK_API_KEY, DEEPSEEK_BASE_URL (direct mode);
  DEEPSEEK_STREAM_API_KEY, DEEPSEEK_STREAM_SIGNING_SECRET (--server; the flags win, and
  keep secrets out of shell history and ps when given here instead)
exit codes: 0 done, 1 failed, 2 usage, 130 interrupted`;

class UsageError extends Error {}
class FailedError extends Error {}

interface Options {
  prompt: string;
  output: string | undefined;
  server: string | undefined;
  model: string | undefined;
  system: string | undefined;
  thinking: boolean | undefined;
  resume: boolean;
  auth: ServerAuth;
}

/** A guarded proxy's client credentials. Never printed, never written to the resume sidecar. */
interface ServerAuth {
  apiKey: string | undefined;
  signingSecret: string | undefined;
}

/** What --resume needs to find the stream again through a proxy. */
interface Sidecar {
  server: string;
  requestId: string;
  body: Record<string, unknown>;
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return '';
  const parts: Buffer[] = [];
  for await (const chunk of process.stdin) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

async function parseOptions(argv: string[]): Promise<Options | 'help' | 'version'> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      allowNegative: true,
      options: {
        output: { type: 'string', short: 'o' },
        server: { type: 'string' },
        'api-key': { type: 'string' },
        'signing-secret': { type: 'string' },
        model: { type: 'string' },
        system: { type: 'string' },
        thinking: { type: 'boolean' },
        resume: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    } as const);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return 'help';
  if (v.version) return 'version';
  if (parsed.positionals.length > 1)
    throw new UsageError('give the prompt as one argument (quote it)');
  if (v.resume && !v.output)
    throw new UsageError('--resume needs -o FILE (the partial answer to continue)');
  let prompt = parsed.positionals[0];
  if (prompt === undefined || prompt === '-') prompt = await readStdin();
  if (prompt.trim() === '' && !(v.resume && v.server))
    throw new UsageError('no prompt (argument or stdin)');
  if (v.server !== undefined && !/^https?:\/\//.test(v.server)) {
    throw new UsageError('--server must be an http:// or https:// URL');
  }
  if (v.server === undefined && (v['api-key'] !== undefined || v['signing-secret'] !== undefined)) {
    throw new UsageError(
      '--api-key and --signing-secret are for --server (direct mode uses DEEPSEEK_API_KEY)',
    );
  }
  // The flag wins; an empty env var counts as unset. Messages name the source, never the value.
  const apiKey = v['api-key'] ?? (process.env.DEEPSEEK_STREAM_API_KEY || undefined);
  if (apiKey !== undefined && !/^[\x21-\x7e]+$/.test(apiKey)) {
    throw new UsageError(
      'the client key (--api-key / DEEPSEEK_STREAM_API_KEY) must be printable ASCII without spaces',
    );
  }
  const signingSecret =
    v['signing-secret'] ?? (process.env.DEEPSEEK_STREAM_SIGNING_SECRET || undefined);
  if (signingSecret === '') throw new UsageError('--signing-secret is empty');
  return {
    prompt,
    output: v.output,
    server: v.server?.replace(/\/+$/, ''),
    model: v.model,
    system: v.system,
    thinking: v.thinking,
    resume: v.resume ?? false,
    auth: { apiKey, signingSecret },
  };
}

/** Progress on stderr, only when it is a terminal: bytes, tokens, tokens/s, elapsed. */
class Progress {
  bytes = 0;
  tokens = 0;
  private readonly started = Date.now();
  private readonly timer: NodeJS.Timeout | undefined;
  private stopped = false;
  constructor(enabled: boolean) {
    if (enabled) {
      this.timer = setInterval(() => this.draw(), 200);
      this.timer.unref();
    }
  }
  add(text: string): void {
    this.bytes += Buffer.byteLength(text);
    this.tokens++;
  }
  private draw(): void {
    const s = (Date.now() - this.started) / 1000;
    const rate = s > 0 ? (this.tokens / s).toFixed(1) : '0';
    process.stderr.write(
      `\r${this.bytes} B  ${this.tokens} tokens  ${rate} tok/s  ${s.toFixed(1)} s `,
    );
  }
  /** Ends the line; safe to call twice. */
  stop(): void {
    if (!this.timer || this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    this.draw();
    process.stderr.write('\n');
  }
}

type Write = (text: string | Buffer) => void;

async function direct(
  o: Options,
  write: Write,
  progress: Progress,
  signal: AbortSignal,
  prefix: string,
) {
  const apiKey = process.env.DEEPSEEK_API_KEY;
  if (!apiKey) throw new UsageError('set DEEPSEEK_API_KEY, or use --server URL');
  const messages: ChatMessage[] = [];
  if (o.system) messages.push({ role: 'system', content: o.system });
  messages.push({ role: 'user', content: o.prompt });
  const stream = streamChat({
    messages,
    model: o.model,
    thinking: o.thinking,
    prefix: prefix || undefined,
    signal,
    apiKey,
    baseUrl: process.env.DEEPSEEK_BASE_URL,
  });
  try {
    for await (const d of stream) {
      if (d.type !== 'content') continue;
      write(d.text);
      progress.add(d.text);
    }
  } catch (err) {
    if ((err as Error).name === 'AbortError') throw err;
    const e = err as { code?: string; message?: string };
    throw new FailedError(`${e.code ?? 'error'}: ${e.message ?? String(err)}`);
  }
}

/**
 * The headers a guarded proxy checks (middleware/auth.ts): the client key, and an HMAC over the
 * exact method, path with query and body bytes sent, with the same helpers the server verifies.
 */
function authHeaders(
  auth: ServerAuth,
  method: string,
  url: URL,
  body: string,
): Record<string, string> {
  const headers: Record<string, string> = {};
  if (auth.apiKey) headers.Authorization = `Bearer ${auth.apiKey}`;
  if (auth.signingSecret) {
    const ts = String(Math.floor(Date.now() / 1000));
    headers['X-Timestamp'] = ts;
    headers['X-Signature'] = sign(
      auth.signingSecret,
      signingPayload(ts, method, url.pathname + url.search, body),
    );
  }
  return headers;
}

/** What to do about a refusal: the proxy's message names the problem, this names the fix. */
const REFUSAL_HINT: Readonly<Record<number, string>> = {
  401: 'give the proxy a client key: --api-key or DEEPSEEK_STREAM_API_KEY',
  403: 'check --signing-secret or DEEPSEEK_STREAM_SIGNING_SECRET, and the clock',
};

/** Through a proxy: POST /chat-stream as text; on resume, the same id with Range. */
function viaServer(
  side: Sidecar,
  auth: ServerAuth,
  skipBytes: number,
  write: Write,
  progress: Progress,
  signal: AbortSignal,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const url = new URL(side.server + '/chat-stream');
    const body = JSON.stringify(side.body);
    const headers: Record<string, string | number> = {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
      'X-Request-ID': side.requestId,
      Accept: 'text/plain',
      ...authHeaders(auth, 'POST', url, body),
    };
    if (skipBytes > 0) headers.Range = `bytes=${skipBytes}-`;
    const mod = url.protocol === 'https:' ? https : http;
    const req = mod.request(url, { method: 'POST', headers, signal }, (res) => {
      const status = res.statusCode ?? 0;
      if (status !== 200 && status !== 206) {
        const parts: Buffer[] = [];
        res.on('data', (b: Buffer) => parts.push(b));
        res.on('end', () => {
          let msg = `HTTP ${status}`;
          try {
            const e = JSON.parse(Buffer.concat(parts).toString()).error as {
              code: string;
              message: string;
            };
            msg = `${e.code}: ${e.message}`;
          } catch {
            // not our JSON: keep the status
          }
          const hint =
            status === 410 ? 'the partial answer can no longer be resumed' : REFUSAL_HINT[status];
          reject(new FailedError(hint ? `${msg} (${hint})` : msg));
        });
        return;
      }
      // A 200 to a ranged request replays from the start: drop what the file already has.
      let skip = status === 200 ? skipBytes : 0;
      res.on('data', (b: Buffer) => {
        if (skip > 0) {
          if (b.length <= skip) {
            skip -= b.length;
            return;
          }
          b = b.subarray(skip);
          skip = 0;
        }
        write(b);
        progress.add(b.toString('utf8'));
      });
      res.on('end', () =>
        res.complete
          ? resolve()
          : reject(new FailedError('the stream was cut before the answer finished')),
      );
      res.on('error', () =>
        reject(new FailedError('the stream was cut before the answer finished')),
      );
    });
    req.on('error', (err) =>
      reject(
        signal.aborted
          ? abortError()
          : new FailedError(`cannot reach ${side.server}: ${err.message}`),
      ),
    );
    req.end(body);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function abortError(): Error {
  const e = new Error('interrupted');
  e.name = 'AbortError';
  return e;
}

async function main(argv: string[]): Promise<number> {
  let o: Options | 'help' | 'version';
  try {
    o = await parseOptions(argv);
  } catch (err) {
    process.stderr.write(`deepseek-stream: ${(err as Error).message}\n\n${USAGE}\n`);
    return EXIT_USAGE;
  }
  if (o === 'help') {
    process.stdout.write(USAGE + '\n');
    return EXIT_OK;
  }
  if (o === 'version') {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '../../package.json'), 'utf8')) as {
      version: string;
    };
    process.stdout.write(`${pkg.version}\n`);
    return EXIT_OK;
  }

  const sidecarPath = o.output ? `${o.output}.resume.json` : undefined;
  let existing = '';
  if (o.resume && o.output) {
    try {
      existing = fs.readFileSync(o.output, 'utf8');
    } catch {
      process.stderr.write(`deepseek-stream: cannot read ${o.output} to resume it\n`);
      return EXIT_USAGE;
    }
  }

  const out = o.output
    ? fs.createWriteStream(o.output, { flags: o.resume ? 'a' : 'w' })
    : undefined;
  const write: Write = out ? (t) => out.write(t) : (t) => process.stdout.write(t);
  const progress = new Progress(Boolean(process.stderr.isTTY));
  const controller = new AbortController();
  let interrupted = false;
  process.once('SIGINT', () => {
    interrupted = true;
    controller.abort();
  });

  let code = EXIT_OK;
  try {
    if (o.server) {
      let side: Sidecar;
      if (o.resume && sidecarPath && fs.existsSync(sidecarPath)) {
        side = JSON.parse(fs.readFileSync(sidecarPath, 'utf8')) as Sidecar;
      } else {
        const body: Record<string, unknown> = { prompt: o.prompt, format: 'text' };
        if (o.model) body.model = o.model;
        if (o.system) body.system = o.system;
        if (o.thinking !== undefined) body.thinking = o.thinking;
        side = { server: o.server, requestId: randomUUID(), body };
        if (sidecarPath) fs.writeFileSync(sidecarPath, JSON.stringify(side));
      }
      // The proxy accepts each signature once, and a resume signs the same method, path and body
      // as the request it continues: sign it in a later second (at most 1 s spent) to differ.
      if (o.resume && o.auth.signingSecret) await sleep(1000 - (Date.now() % 1000));
      await viaServer(
        side,
        o.auth,
        Buffer.byteLength(existing),
        write,
        progress,
        controller.signal,
      );
    } else {
      await direct(o, write, progress, controller.signal, existing);
    }
    if (sidecarPath && fs.existsSync(sidecarPath)) fs.unlinkSync(sidecarPath);
  } catch (err) {
    if (interrupted || (err as Error).name === 'AbortError') {
      code = EXIT_INTERRUPTED;
    } else if (err instanceof UsageError) {
      process.stderr.write(`deepseek-stream: ${err.message}\n`);
      code = EXIT_USAGE;
    } else {
      // One line of its own: after the progress line, and after answer text on a terminal.
      progress.stop();
      const lead = !out && progress.bytes > 0 && process.stdout.isTTY ? '\n' : '';
      process.stderr.write(`${lead}deepseek-stream: ${(err as Error).message}\n`);
      code = EXIT_FAILED;
    }
  } finally {
    progress.stop();
  }
  if (interrupted) code = EXIT_INTERRUPTED;
  // Keep what arrived: the partial file is flushed before exit.
  if (out) await new Promise<void>((r) => out.end(r));
  return code;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`deepseek-stream: ${(err as Error).message}\n`);
    process.exit(EXIT_FAILED);
  },
);
