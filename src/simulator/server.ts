// simulator/server.ts: a DeepSeek API emulator on node:http. The embedded upstream when no key
// is set, and the tests' upstream. Speaks the real wire format (role chunk, reasoning with
// `content: null`, content, finish with usage or a `choices: []` usage chunk, `[DONE]`,
// `: keep-alive` while queued), answers non-stream requests and `/beta` prefix completion, and
// injects the faults in directives.ts. It records what it saw so tests can assert upstream-side.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { seedOf, simulateAnswer, tokenAt, DEFAULT_REASONING_TOKENS } from './answer';
import { parseDirectives, type Directives } from './directives';

export interface SimulatorOptions {
  port?: number;
  host?: string;
  /** Per-token delay when a prompt does not set one (0 = as fast as the socket takes it). */
  tokenDelayMs?: number;
  /** When set, requests must carry this bearer key. */
  apiKey?: string;
  models?: string[];
}

export interface RecordedRequest {
  path: string;
  body: SimBody;
  /** True when the client hung up before the response ended. */
  clientClosed: boolean;
  /** Bytes of response body written. */
  bytesWritten: number;
  done: boolean;
}

interface SimBody {
  model?: string;
  /** As the client sent it: not checked, so anything may be in it (see asMessage). */
  messages?: Array<{ role?: string; content?: string; prefix?: boolean }>;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  thinking?: { type?: string };
  max_tokens?: number;
}

export interface Simulator {
  url: string;
  port: number;
  requests: RecordedRequest[];
  /** Requests whose response is still being written. */
  readonly active: number;
  close(): Promise<void>;
  /** Forget recorded requests and fault counters. */
  reset(): void;
}

const DEFAULT_MODELS = ['deepseek-v4-flash', 'deepseek-v4-pro'];
/**
 * Recorded requests kept (the newest), and prompts whose fault count is kept. Tests read a few
 * dozen; without a bound, `npm start` and the bench's simulator held every request body forever.
 */
const MAX_RECORDED = 1000;
const MAX_FAULT_COUNTERS = 10_000;
/** Request bodies above this are drained and refused with 413, never buffered. */
export const SIM_MAX_BODY_BYTES = 16 * 1024 * 1024;

export async function startSimulator(opts: SimulatorOptions = {}): Promise<Simulator> {
  const models = new Set(opts.models ?? DEFAULT_MODELS);
  const defaultDelay = opts.tokenDelayMs ?? 0;
  const requests: RecordedRequest[] = [];
  const counters = new Map<string, number>();
  let active = 0;

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  server.keepAliveTimeout = 30_000;

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = (req.url ?? '/').split('?')[0]!;
    const path = url.replace(/^\/v1\//, '/');
    if (req.method === 'GET' && path === '/models') {
      json(res, 200, {
        object: 'list',
        data: [...models].map((id) => ({ id, object: 'model', owned_by: 'deepseek' })),
      });
      return;
    }
    if (
      req.method !== 'POST' ||
      (path !== '/chat/completions' && path !== '/beta/chat/completions')
    ) {
      json(res, 404, apiError('Not Found', 'invalid_request_error'));
      return;
    }
    const auth = req.headers.authorization;
    if (!auth || !auth.startsWith('Bearer ') || (opts.apiKey && auth !== `Bearer ${opts.apiKey}`)) {
      json(
        res,
        401,
        apiError('Authentication Fails, Your api key is invalid', 'authentication_error'),
      );
      return;
    }
    const raw = await readBody(req);
    if (raw === undefined) {
      json(res, 413, apiError('Request body too large', 'invalid_request_error'));
      return;
    }
    let body: SimBody;
    try {
      body = JSON.parse(raw) as SimBody;
    } catch {
      json(res, 400, apiError('Invalid JSON body', 'invalid_request_error'));
      return;
    }
    // `null`, a number or an array parse as JSON too: without this check they threw below and the
    // client saw its connection reset instead of an error it can read.
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      json(res, 400, apiError('Invalid request body format', 'invalid_request_error'));
      return;
    }
    const record: RecordedRequest = {
      path,
      body,
      clientClosed: false,
      bytesWritten: 0,
      done: false,
    };
    requests.push(record);
    if (requests.length > MAX_RECORDED) requests.splice(0, requests.length - MAX_RECORDED);
    if (typeof body.model !== 'string' || !models.has(body.model)) {
      json(res, 400, apiError('Model Not Exist', 'invalid_request_error'));
      return;
    }
    const maxTokens: unknown = body.max_tokens;
    if (maxTokens != null && !(Number.isInteger(maxTokens) && (maxTokens as number) >= 1)) {
      // DeepSeek refuses these with 422; answering them let a bad value through unnoticed.
      json(res, 422, apiError('Invalid max_tokens value', 'invalid_request_error'));
      return;
    }
    const messages = (Array.isArray(body.messages) ? (body.messages as unknown[]) : []).map(
      asMessage,
    );
    const prompt = [...messages].reverse().find((m) => m.role === 'user')?.content;
    if (prompt === undefined) {
      json(res, 400, apiError('messages must include a user message', 'invalid_request_error'));
      return;
    }
    const last = messages[messages.length - 1];
    const prefix =
      path === '/beta/chat/completions' && last?.role === 'assistant' && last.prefix
        ? (last.content ?? '')
        : undefined;
    if (path === '/beta/chat/completions' && prefix === undefined) {
      json(
        res,
        400,
        apiError(
          'prefix completion needs a last assistant message with prefix: true',
          'invalid_request_error',
        ),
      );
      return;
    }

    const d = parseDirectives(prompt);
    const faulty = d !== undefined && countFault(prompt) <= d.times;

    active++;
    res.on('close', () => {
      active--;
      if (!res.writableFinished) record.clientClosed = true;
    });

    if (faulty && d.stallHeadersMs > 0) {
      await sleep(d.stallHeadersMs, res);
      if (res.destroyed) return;
    }
    if (faulty && d.status !== undefined) {
      const headers: Record<string, string> = {};
      if (d.retryAfter !== undefined) headers['Retry-After'] = d.retryAfter;
      if (d.retryAfterMs !== undefined) headers['retry-after-ms'] = d.retryAfterMs;
      if (d.html) {
        res.writeHead(d.status, { ...headers, 'Content-Type': 'text/html' });
        res.end(
          `<html><body><h1>${d.status} Service Temporarily Unavailable</h1><p>nginx</p></body></html>`,
        );
      } else {
        json(res, d.status, apiError(statusMessage(d.status), 'api_error'), headers);
      }
      record.done = true;
      return;
    }
    if (faulty && d.html200) {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end('<html><body>Please log in</body></html>');
      record.done = true;
      return;
    }

    const thinkingOn = prefix === undefined && body.thinking?.type !== 'disabled'; // V4: thinking on by default
    const answer = simulateAnswer(prompt, { thinking: thinkingOn });
    const seed = seedOf(prompt);
    // max_tokens bounds what this request generates, the chain of thought included (as DeepSeek
    // counts it): reasoning comes first, the answer gets what is left; for a prefix completion,
    // the continuation.
    const budget = typeof body.max_tokens === 'number' ? body.max_tokens : Infinity;
    const fullReasoning = thinkingOn ? answer.reasoning.length : 0;
    const reasoningCount = Math.min(fullReasoning, budget);
    // Content tokens to emit: all of them, or what follows the prefix.
    let contentTokens: string[] = answer.content;
    if (prefix !== undefined) contentTokens = continuation(answer.content, prefix, seed);
    const contentBudget = budget - reasoningCount;
    const finishReason =
      reasoningCount < fullReasoning || contentBudget < contentTokens.length ? 'length' : 'stop';
    if (finishReason === 'length') contentTokens = contentTokens.slice(0, contentBudget);
    // The prompt is the messages, the prefix included (the answer so far, given back).
    const prefixTokens =
      prefix === undefined
        ? 0
        : answer.text.startsWith(prefix)
          ? answer.content.length - continuation(answer.content, prefix, seed).length
          : Math.ceil(prefix.length / 4);
    const promptTokens = Math.ceil(prompt.length / 4) + prefixTokens;
    const usageOf = (completion: number) => ({
      prompt_tokens: promptTokens,
      completion_tokens: reasoningCount + completion,
      total_tokens: promptTokens + reasoningCount + completion,
      completion_tokens_details: { reasoning_tokens: reasoningCount },
    });

    if (body.stream !== true) {
      const completion = {
        id: randomUUID(),
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: body.model,
        system_fingerprint: 'fp_simulator',
        choices: [
          {
            index: 0,
            message: {
              role: 'assistant',
              content: contentTokens.join(''),
              reasoning_content: thinkingOn
                ? answer.reasoning.slice(0, reasoningCount).join('')
                : null,
            },
            logprobs: null,
            finish_reason: faulty && d.finish !== undefined ? d.finish : finishReason,
          },
        ],
        usage: usageOf(contentTokens.length),
      };
      await nonStream(res, completion, faulty ? d : undefined, record);
      return;
    }

    const w = new Wire(res, record, d, faulty);
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
    });
    res.flushHeaders();
    const id = randomUUID();
    const created = Math.floor(Date.now() / 1000);
    const model = body.model;
    const head = `{"id":"${id}","object":"chat.completion.chunk","created":${created},"model":"${model}","system_fingerprint":"fp_simulator","choices":[{"index":0,"delta":`;
    const delay = d?.delayMs ?? defaultDelay;

    if (d?.bom) w.raw('\ufeff');
    if (faulty && d.queueMs > 0) await w.keepAlives(d.queueMs, d.keepAliveMs || 1000);
    if (faulty && d.stallFirstMs > 0) await w.stall(d.stallFirstMs, d.keepAliveMs);
    if (w.dead) return;

    await w.event(
      `${head}{"role":"assistant","content":null,"reasoning_content":null},"logprobs":null,"finish_reason":null}]}`,
    );
    for (let i = 0; i < reasoningCount && !w.dead; i++) {
      await w.event(
        `${head}{"content":null,"reasoning_content":${JSON.stringify(tokenAt(seed, i, 'reasoning'))}},"logprobs":null,"finish_reason":null}]}`,
      );
      if (delay > 0) await w.flushAndSleep(delay);
    }
    let sent = 0;
    for (const token of contentTokens) {
      if (w.dead) return;
      if (faulty && d.reset !== undefined && sent >= d.reset) return w.kill();
      if (faulty && d.malformed !== undefined && sent === d.malformed) {
        await w.event('{"choices":[{"index":0,"delta":{"content":"oops"');
      }
      if (faulty && d.finish !== undefined && sent >= (d.finishAfter ?? 0)) break;
      if (faulty && d.stallAfter !== undefined && sent === d.stallAfter && d.stallMs > 0) {
        await w.stall(d.stallMs, d.keepAliveMs);
        if (w.dead) return;
      }
      await w.event(
        `${head}{"content":${JSON.stringify(token)}},"logprobs":null,"finish_reason":null}]}`,
      );
      sent++;
      if (delay > 0) await w.flushAndSleep(delay);
    }
    if (w.dead) return;
    const finish = faulty && d.finish !== undefined ? d.finish : finishReason;
    const usage = JSON.stringify(usageOf(sent));
    const includeUsage = body.stream_options?.include_usage === true;
    // JSON.stringify: a `finish=` value from the prompt may hold a quote or a backslash.
    await w.event(
      `${head}{"content":""},"logprobs":null,"finish_reason":${JSON.stringify(finish)}}],"usage":${includeUsage ? 'null' : usage}}`,
    );
    if (includeUsage) {
      await w.event(
        `{"id":"${id}","object":"chat.completion.chunk","created":${created},"model":"${model}","system_fingerprint":"fp_simulator","choices":[],"usage":${usage}}`,
      );
    }
    if (!d?.noDone) await w.event('[DONE]');
    await w.end();
  }

  /** How many requests with this prompt (directives in it) came, this one included. */
  function countFault(prompt: string): number {
    const count = (counters.get(prompt) ?? 0) + 1;
    counters.delete(prompt); // re-insert: the map's order is least recently used first
    counters.set(prompt, count);
    if (counters.size > MAX_FAULT_COUNTERS) counters.delete(counters.keys().next().value!);
    return count;
  }

  async function nonStream(
    res: http.ServerResponse,
    completion: unknown,
    d: Directives | undefined,
    record: RecordedRequest,
  ): Promise<void> {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    // While queued, DeepSeek keeps a non-stream request alive with empty lines.
    if (d && d.queueMs > 0) {
      const until = Date.now() + d.queueMs;
      while (Date.now() < until && !res.destroyed) {
        res.write('\n');
        await sleep(Math.min(d.keepAliveMs || 1000, until - Date.now()), res);
      }
    }
    res.end(JSON.stringify(completion));
    record.done = true;
  }

  // A port already taken rejects here (a message for the caller), not as an uncaught 'error'.
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = opts.host && opts.host !== '0.0.0.0' ? opts.host : '127.0.0.1';
  return {
    url: `http://${host}:${port}`,
    port,
    requests,
    get active() {
      return active;
    },
    reset() {
      requests.length = 0;
      counters.clear();
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** The tokens that follow `prefix` in the full answer; a fresh tail if the prefix diverged. */
function continuation(tokens: string[], prefix: string, seed: number): string[] {
  const full = tokens.join('');
  if (full.startsWith(prefix)) {
    let acc = 0;
    for (let i = 0; i < tokens.length; i++) {
      acc += tokens[i]!.length;
      if (acc >= prefix.length) {
        const tail = full.slice(prefix.length, acc);
        return tail ? [tail, ...tokens.slice(i + 1)] : tokens.slice(i + 1);
      }
    }
    return [];
  }
  return Array.from({ length: 8 }, (_, i) => tokenAt(seed ^ 0x5bd1e995, i, 'content'));
}

/** Writes the SSE body with the wire faults applied: fragments, coalescing, endings, cuts. */
class Wire {
  dead = false;
  private buffered = '';
  private bytes = 0;

  constructor(
    private readonly res: http.ServerResponse,
    private readonly record: RecordedRequest,
    private readonly d: Directives | undefined,
    private readonly faulty: boolean,
  ) {
    res.on('close', () => {
      this.dead = true;
    });
  }

  /** One `data:` event. */
  event(data: string): Promise<void> {
    const nl = this.d?.lineEnding ?? '\n';
    return this.raw(`data: ${data}${nl}${nl}`);
  }

  async keepAlives(ms: number, every: number): Promise<void> {
    const nl = this.d?.lineEnding ?? '\n';
    const until = Date.now() + ms;
    while (Date.now() < until && !this.dead) {
      await this.raw(`: keep-alive${nl}${nl}`);
      await this.flushAndSleep(Math.max(1, Math.min(every, until - Date.now())));
    }
  }

  async stall(ms: number, keepAliveMs: number): Promise<void> {
    if (keepAliveMs > 0) return this.keepAlives(ms, keepAliveMs);
    await this.flushAndSleep(ms);
  }

  async raw(text: string): Promise<void> {
    if (this.dead) return;
    if (this.d?.coalesce) {
      this.buffered += text;
      return;
    }
    await this.write(Buffer.from(text, 'utf8'));
  }

  async flushAndSleep(ms: number): Promise<void> {
    await this.flush();
    await sleep(ms, this.res);
  }

  async end(): Promise<void> {
    await this.flush();
    if (this.dead) return;
    this.record.done = true;
    this.res.end();
  }

  kill(): void {
    void this.flush().then(() => {
      this.dead = true;
      this.res.socket?.destroy();
    });
  }

  private async flush(): Promise<void> {
    if (this.buffered) {
      const b = Buffer.from(this.buffered, 'utf8');
      this.buffered = '';
      await this.write(b);
    }
  }

  private async write(buf: Buffer): Promise<void> {
    const frag = this.d?.frag ?? 0;
    if (frag > 0) {
      for (let i = 0; i < buf.length && !this.dead; i += frag) {
        await this.writeChecked(buf.subarray(i, i + frag));
        await new Promise((r) => setImmediate(r));
      }
      return;
    }
    await this.writeChecked(buf);
  }

  private async writeChecked(buf: Buffer): Promise<void> {
    if (this.dead) return;
    const cut = this.faulty ? this.d?.cut : undefined;
    if (cut !== undefined && this.bytes + buf.length >= cut) {
      const keep = cut - this.bytes;
      if (keep > 0) this.res.write(buf.subarray(0, keep));
      this.bytes = cut;
      this.record.bytesWritten = this.bytes;
      this.dead = true;
      // Let the partial write reach the wire, then drop the connection without a clean end.
      setImmediate(() => this.res.socket?.destroy());
      return;
    }
    this.bytes += buf.length;
    this.record.bytesWritten = this.bytes;
    if (!this.res.write(buf)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.res.off('drain', done);
          this.res.off('close', done);
          resolve();
        };
        this.res.on('drain', done);
        this.res.on('close', done);
      });
    }
  }
}

/**
 * Wait `ms`, or less: a response that closes (the client left) ends the wait, so a stalled answer
 * nobody reads holds no timer (a test process would otherwise wait for it before exiting).
 */
function sleep(ms: number, res: http.ServerResponse): Promise<void> {
  if (res.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      res.off('close', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    res.on('close', done);
  });
}

function json(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function apiError(message: string, type: string) {
  return { error: { message, type, param: null, code: 'invalid_request_error' } };
}

function statusMessage(status: number): string {
  switch (status) {
    case 400:
      return 'Invalid request body format';
    case 401:
      return 'Authentication Fails';
    case 402:
      return 'Insufficient Balance';
    case 422:
      return 'Invalid Parameters: temperature out of range';
    case 429:
      return 'Rate Limit Reached';
    case 500:
      return 'Server Error';
    case 503:
      return 'Server Overloaded';
    default:
      return http.STATUS_CODES[status] ?? 'Error';
  }
}

/**
 * The body as text, or undefined when it is over SIM_MAX_BODY_BYTES: the rest is read and
 * dropped (so the client can read the 413), never buffered.
 */
function readBody(req: http.IncomingMessage): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    let parts: Buffer[] | undefined = [];
    let size = 0;
    req.on('data', (b: Buffer) => {
      size += b.length;
      if (size > SIM_MAX_BODY_BYTES) parts = undefined;
      else parts?.push(b);
    });
    req.on('end', () => resolve(parts && Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

interface SimMessage {
  role?: string;
  /** The text: a string, or the text parts of an OpenAI content array joined. */
  content?: string;
  prefix?: boolean;
}

/** A message as the simulator reads it; anything that is not an object reads as no message. */
function asMessage(m: unknown): SimMessage {
  if (typeof m !== 'object' || m === null) return {};
  const { role, content, prefix } = m as Record<string, unknown>;
  let text: string | undefined;
  if (typeof content === 'string') text = content;
  else if (Array.isArray(content)) {
    text = content
      .map((p) => (p as { text?: unknown } | null)?.text)
      .filter((t): t is string => typeof t === 'string')
      .join('');
  }
  return {
    role: typeof role === 'string' ? role : undefined,
    content: text,
    prefix: prefix === true,
  };
}

export { DEFAULT_REASONING_TOKENS };
