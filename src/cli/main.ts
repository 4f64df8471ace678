#!/usr/bin/env node
// cli/main.ts: `deepseek-stream`, the command-line client. Streams one answer to stdout or a
// file, straight from DeepSeek (DEEPSEEK_API_KEY) or through a running proxy (--server), with a
// progress line on a terminal, Ctrl-C that keeps the partial file, and --resume to finish it.

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ConfigError } from '../config';
import { libraryConfig, streamChat } from '../library';
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
  const server = v.server === undefined ? undefined : serverUrl(v.server);
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
  // A --server --resume takes the request from the resume file: no prompt needed, and stdin is
  // not read (it may be a pipe that stays open). Every other run needs one.
  let prompt = parsed.positionals[0] ?? '';
  if (!(v.resume && server)) {
    if (parsed.positionals[0] === undefined || prompt === '-') prompt = await readStdin();
    if (prompt.trim() === '') throw new UsageError('no prompt (argument or stdin)');
  }
  return {
    prompt,
    output: v.output,
    server,
    model: v.model,
    system: v.system,
    thinking: v.thinking,
    resume: v.resume ?? false,
    auth: { apiKey, signingSecret },
  };
}

/**
 * `--server URL`, checked as a usage error before anything runs: http or https, a host, a valid
 * port; no query or fragment (the CLI appends /chat-stream); and no user:password, which would
 * end up in the resume file and in error lines (the proxy's client key goes in --api-key).
 * Messages never echo the URL, which may hold a secret.
 */
function serverUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UsageError('--server is not a valid URL (e.g. http://localhost:3000)');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError('--server must be an http:// or https:// URL');
  }
  if (url.hostname === '') throw new UsageError('--server needs a host');
  if (url.username !== '' || url.password !== '') {
    throw new UsageError(
      '--server must not carry credentials: give the client key with --api-key or DEEPSEEK_STREAM_API_KEY',
    );
  }
  if (url.search !== '' || url.hash !== '' || raw.includes('?') || raw.includes('#')) {
    throw new UsageError('--server takes no query or fragment (the proxy base URL only)');
  }
  return url.href.replace(/\/+$/, '');
}

/** A URL for messages: a resume file from an older version may still hold user:password. */
function shown(server: string): string {
  try {
    const url = new URL(server);
    url.username = '';
    url.password = '';
    return url.href.replace(/\/+$/, '');
  } catch {
    return 'the server';
  }
}

/**
 * Progress on stderr, only when it is a terminal: bytes, tokens, tokens/s, elapsed. Redrawn in
 * place ('live') unless the answer goes to a terminal too: a \r redraw there would overwrite
 * answer text on the same screen, so that case gets one summary line at the end ('summary').
 */
type ProgressMode = 'off' | 'live' | 'summary';

class Progress {
  bytes = 0;
  tokens = 0;
  private readonly started = Date.now();
  private readonly timer: NodeJS.Timeout | undefined;
  private stopped = false;
  constructor(
    private readonly mode: ProgressMode,
    /** Ends a line of answer text left open on the terminal before stderr writes under it. */
    private readonly endAnswerLine: () => void,
  ) {
    if (mode === 'live') {
      this.timer = setInterval(() => this.draw(), 200);
      this.timer.unref();
    }
  }
  add(bytes: number): void {
    this.bytes += bytes;
    this.tokens++;
  }
  private line(): string {
    const s = (Date.now() - this.started) / 1000;
    const rate = s > 0 ? (this.tokens / s).toFixed(1) : '0';
    return `${this.bytes} B  ${this.tokens} tokens  ${rate} tok/s  ${s.toFixed(1)} s `;
  }
  private draw(): void {
    process.stderr.write(`\r${this.line()}`);
  }
  /** Ends the line (live) or writes the summary (summary); safe to call twice. */
  stop(): void {
    if (this.mode === 'off' || this.stopped) return;
    this.stopped = true;
    if (this.timer) {
      clearInterval(this.timer);
      this.draw();
      process.stderr.write('\n');
    } else {
      this.endAnswerLine();
      process.stderr.write(`${this.line().trimEnd()}\n`);
    }
  }
}

type Write = (text: string | Buffer) => void;

async function direct(
  o: Options,
  write: Write,
  progress: Progress,
  signal: AbortSignal,
  prefix: string,
  apiKey: string,
) {
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
      progress.add(Buffer.byteLength(d.text));
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
 * The proxy accepts each signature once, so `url` carries a nonce when signing (see viaServer).
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
    // Two identical requests signed in the same second (a resume, a quick retry, two runs side by
    // side) would carry the same signature, and the proxy takes the second for a replay: a random
    // query parameter, which POST /chat-stream ignores, makes each signed request unique.
    if (auth.signingSecret) url.searchParams.set('nonce', randomBytes(12).toString('hex'));
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
        progress.add(b.length);
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
          : new FailedError(`cannot reach ${shown(side.server)}: ${err.message}`),
      ),
    );
    req.end(body);
  });
}

function abortError(): Error {
  const e = new Error('interrupted');
  e.name = 'AbortError';
  return e;
}

/** What the checks before the run found: everything the run needs, nothing opened yet. */
interface Plan {
  /** Direct mode: DeepSeek's key. */
  apiKey: string | undefined;
  /** --server --resume: the request to continue, from the resume file. */
  side: Sidecar | undefined;
  /** --server --resume: the partial file's size in bytes, the Range to ask for. */
  skipBytes: number;
  /** Direct --resume: the partial answer, whole characters only. */
  prefix: string;
  /** Direct --resume: the length to cut the file to (an unfinished last character), if any. */
  truncateTo: number | undefined;
}

/** Bytes at the end of `buf` that begin a UTF-8 character it does not finish (0 to 3). */
function unfinishedTail(buf: Buffer): number {
  for (let back = 1; back <= Math.min(3, buf.length); back++) {
    const b = buf[buf.length - back]!;
    if ((b & 0xc0) === 0x80) continue; // a continuation byte: look further back for the lead
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

/** An error's message on one line (a ConfigError lists its problems on several). */
function oneLine(err: unknown): string {
  return (err as Error).message.replace(/:\s*\n\s*/, ': ').replace(/\s*\n\s*/g, '; ');
}

/** A file system error without the path the message repeats ("ENOENT: no such file ..."). */
function ioMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.syscall ? e.message.replace(/, \w+( '.*')?$/, '') : oneLine(e);
}

function readSidecar(sidecarPath: string): Sidecar {
  let text: string;
  try {
    text = fs.readFileSync(sidecarPath, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UsageError(
        `nothing to resume: ${sidecarPath} is missing (it is kept only while a --server download is unfinished)`,
      );
    }
    throw new UsageError(`cannot read ${sidecarPath}: ${ioMessage(err)}`);
  }
  let side: Partial<Sidecar> | undefined;
  try {
    side = JSON.parse(text) as Partial<Sidecar>;
  } catch {
    side = undefined;
  }
  if (
    typeof side?.server !== 'string' ||
    typeof side.requestId !== 'string' ||
    typeof side.body !== 'object' ||
    side.body === null
  ) {
    throw new UsageError(`${sidecarPath} is not a deepseek-stream resume file`);
  }
  return side as Sidecar;
}

/**
 * Every check that needs no request, before the output file is opened (and truncated): a usage
 * error leaves an existing file as it was. Throws UsageError.
 */
function plan(o: Options, sidecarPath: string | undefined): Plan {
  const p: Plan = {
    apiKey: undefined,
    side: undefined,
    skipBytes: 0,
    prefix: '',
    truncateTo: undefined,
  };
  if (!o.server) {
    p.apiKey = process.env.DEEPSEEK_API_KEY;
    if (!p.apiKey) throw new UsageError('set DEEPSEEK_API_KEY, or use --server URL');
    try {
      libraryConfig();
    } catch (err) {
      if (err instanceof ConfigError) throw new UsageError(oneLine(err));
      throw err;
    }
  }
  if (o.resume && o.output) {
    let partial: Buffer;
    try {
      partial = fs.readFileSync(o.output);
    } catch {
      throw new UsageError(`cannot read ${o.output} to resume it`);
    }
    if (o.server) {
      // Range counts bytes: the file's size, even when it ends inside a character (the bytes the
      // proxy sends next finish it).
      p.side = readSidecar(sidecarPath!);
      p.skipBytes = partial.length;
    } else {
      // Prefix completion takes text: whole characters; an unfinished last one is cut from the
      // file and comes again with the continuation.
      const tail = unfinishedTail(partial);
      p.prefix = partial.subarray(0, partial.length - tail).toString('utf8');
      if (tail > 0) p.truncateTo = partial.length - tail;
    }
  }
  return p;
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
  let p: Plan;
  try {
    p = plan(o, sidecarPath);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`deepseek-stream: ${err.message}\n`);
    return EXIT_USAGE;
  }

  // Only now, after every check and before any request: open (without --resume, truncate) the
  // output. A path that cannot be written is one line and exit 2, and no request is made.
  let out: fs.WriteStream | undefined;
  if (o.output) {
    let fd: number | undefined;
    try {
      fd = fs.openSync(o.output, o.resume ? 'a' : 'w');
      if (p.truncateTo !== undefined) fs.ftruncateSync(fd, p.truncateTo);
    } catch (err) {
      if (fd !== undefined) fs.closeSync(fd);
      process.stderr.write(`deepseek-stream: cannot write ${o.output}: ${ioMessage(err)}\n`);
      return EXIT_USAGE;
    }
    out = fs.createWriteStream(o.output, { fd });
  }

  const controller = new AbortController();
  // A write that fails (disk full, stdout closed by `| head`) stops the request: no crash.
  let outputError: NodeJS.ErrnoException | undefined;
  const onOutputError = (err: Error) => {
    if (outputError) return;
    outputError = err;
    controller.abort();
  };
  if (out) out.on('error', onOutputError);
  else process.stdout.on('error', onOutputError);

  // The answer on a terminal: a line left open there is ended before stderr writes under it.
  const toTerminal = !out && Boolean(process.stdout.isTTY);
  let lineOpen = false;
  const endAnswerLine = () => {
    if (!lineOpen || !process.stderr.isTTY) return;
    process.stderr.write('\n');
    lineOpen = false;
  };
  const write: Write = (t) => {
    if (outputError || t.length === 0) return;
    if (out) {
      out.write(t);
      return;
    }
    process.stdout.write(t);
    if (toTerminal) lineOpen = typeof t === 'string' ? !t.endsWith('\n') : t.at(-1) !== 0x0a;
  };
  const progress = new Progress(
    !process.stderr.isTTY ? 'off' : toTerminal ? 'summary' : 'live',
    endAnswerLine,
  );
  let interrupted = false;
  process.once('SIGINT', () => {
    interrupted = true;
    controller.abort();
  });

  let code = EXIT_OK;
  try {
    if (o.server) {
      let side = p.side;
      if (!side) {
        const body: Record<string, unknown> = { prompt: o.prompt, format: 'text' };
        if (o.model) body.model = o.model;
        if (o.system) body.system = o.system;
        if (o.thinking !== undefined) body.thinking = o.thinking;
        side = { server: o.server, requestId: randomUUID(), body };
        if (sidecarPath) fs.writeFileSync(sidecarPath, JSON.stringify(side));
      }
      await viaServer(side, o.auth, p.skipBytes, write, progress, controller.signal);
    } else {
      await direct(o, write, progress, controller.signal, p.prefix, p.apiKey!);
    }
  } catch (err) {
    if (outputError) {
      // reported below, once the output is closed
    } else if (interrupted || (err as Error).name === 'AbortError') {
      code = EXIT_INTERRUPTED;
    } else if (err instanceof UsageError) {
      process.stderr.write(`deepseek-stream: ${err.message}\n`);
      code = EXIT_USAGE;
    } else {
      // One line of its own: after the progress line, and after answer text on a terminal.
      progress.stop();
      endAnswerLine();
      process.stderr.write(`deepseek-stream: ${oneLine(err)}\n`);
      code = EXIT_FAILED;
    }
  } finally {
    progress.stop();
  }
  // Keep what arrived: the partial file is flushed before exit (a late write error shows here).
  if (out) await closed(out);
  else if (!outputError) await new Promise<void>((r) => process.stdout.write('', () => r()));
  if (outputError) {
    code = EXIT_FAILED;
    // A reader that went away (`| head`) wanted no more: exit quietly.
    if (outputError.code !== 'EPIPE') {
      endAnswerLine();
      const where = o.output ?? 'stdout';
      process.stderr.write(`deepseek-stream: cannot write ${where}: ${ioMessage(outputError)}\n`);
    }
  } else if (code === EXIT_OK && sidecarPath && fs.existsSync(sidecarPath)) {
    fs.unlinkSync(sidecarPath);
  }
  if (interrupted) code = EXIT_INTERRUPTED;
  return code;
}

/** Ends a file stream and waits for its descriptor to close, after an error too. */
function closed(out: fs.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    if (out.closed) return resolve();
    out.once('close', () => resolve());
    if (!out.destroyed) out.end();
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`deepseek-stream: ${(err as Error).message}\n`);
    process.exit(EXIT_FAILED);
  },
);
