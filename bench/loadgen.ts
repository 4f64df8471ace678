// bench/loadgen.ts: the load generator (runs in the bench's main process). node:http with a
// keep-alive agent; N workers pull jobs from a list, so `concurrency` streams are open at a time.
// Per stream it records the time to the first answer token and to the end of the body, and checks
// the received answer against the simulator's deterministic answer (tokens lost, U+FFFD).
//
// The first token is spotted on the wire as the bytes arrive (cheaply, by pattern); the full body
// is parsed once, after it ended, so the generator's own parsing cost stays off the clock.

import http from 'node:http';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';

/** How a target's body carries the answer. */
export type Wire =
  /** /chat-stream SSE: `data: {"content":"..."}` events, `event: done` at the end. */
  | 'proxy-sse'
  /** /chat-stream text: the answer itself; complete only with the terminating chunk. */
  | 'text'
  /** DeepSeek/OpenAI chunks (`choices[0].delta.content`), `data: [DONE]` at the end. */
  | 'openai-sse';

export interface RequestSpec {
  method: 'GET' | 'POST';
  path: string;
  headers: Record<string, string>;
  body?: string;
}

export interface Expected {
  text: string;
  tokens: string[];
}

export interface Job {
  request: RequestSpec;
  expected: Expected;
}

export interface StreamResult {
  ok: boolean;
  error?: string;
  status: number;
  /** ms from sending the request to the first answer token; NaN when none came. */
  ttftMs: number;
  /** ms from sending the request to the end of the body. */
  totalMs: number;
  tokens: number;
  tokensLost: number;
  /** The answer differs from the expected text (lost, doubled or altered tokens). */
  mismatch: boolean;
  /** U+FFFD replacement characters in the received answer. */
  replacementChars: number;
  bytes: number;
}

export interface LoadResult {
  results: StreamResult[];
  wallMs: number;
  /** Most streams in flight at once. */
  peakOpen: number;
  /** This process's CPU time during the run (µs), to see when the generator is the bottleneck. */
  generatorCpuMicros: number;
  /**
   * The longest this process's event loop was blocked during the run (ms, 10 ms resolution):
   * every stream's times are taken here, so a stall here is a stall in all of them.
   */
  generatorMaxDelayMs: number;
  /** New connections this run opened, and ms from the first to the last of them connecting. */
  connects: { count: number; spanMs: number };
}

export interface LoadOptions {
  host: string;
  port: number;
  wire: Wire;
  jobs: Job[];
  concurrency: number;
  timeoutMs: number;
  /** Called when a stream ends, with the number still in flight and the number done. */
  onProgress?: (open: number, done: number) => void;
  /** Called when a stream receives its first answer token. */
  onFirstToken?: () => void;
}

const FIRST_TOKEN: Record<Exclude<Wire, 'text'>, RegExp> = {
  'proxy-sse': /(^|\n)data: \{"content":"/,
  // The role chunk has `"content":null` and the finish chunk `"content":""`: neither is a token.
  'openai-sse': /"delta":\{"content":"[^"]/,
};

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const agent = new http.Agent({
    keepAlive: true,
    maxSockets: opts.concurrency,
    maxFreeSockets: opts.concurrency,
  });
  const results: StreamResult[] = new Array(opts.jobs.length);
  let next = 0;
  let open = 0;
  let peakOpen = 0;
  let done = 0;
  const connects = { count: 0, first: 0, last: 0 };
  const cpu0 = process.cpuUsage();
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const t0 = performance.now();
  const worker = async () => {
    while (next < opts.jobs.length) {
      const i = next++;
      open++;
      if (open > peakOpen) peakOpen = open;
      results[i] = await oneStream(agent, opts, opts.jobs[i]!, connects);
      open--;
      done++;
      opts.onProgress?.(open, done);
    }
  };
  await Promise.all(
    Array.from({ length: Math.min(opts.concurrency, opts.jobs.length) }, () => worker()),
  );
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  delay.disable();
  agent.destroy();
  return {
    results,
    wallMs,
    peakOpen,
    generatorCpuMicros: cpu.user + cpu.system,
    generatorMaxDelayMs: delay.max / 1e6,
    connects: {
      count: connects.count,
      spanMs: connects.count > 1 ? connects.last - connects.first : 0,
    },
  };
}

function oneStream(
  agent: http.Agent,
  opts: LoadOptions,
  job: Job,
  connects: { count: number; first: number; last: number },
): Promise<StreamResult> {
  return new Promise<StreamResult>((resolve) => {
    const spec = job.request;
    const t0 = performance.now();
    let ttft = NaN;
    let status = 0;
    const chunks: Buffer[] = [];
    let bytes = 0;
    // Text decoded so far, kept only until the first token has been seen.
    const decoder = new TextDecoder();
    let scan = '';
    const pattern = opts.wire === 'text' ? undefined : FIRST_TOKEN[opts.wire];
    let settled = false;

    const finish = (complete: boolean, error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const totalMs = performance.now() - t0;
      const body = Buffer.concat(chunks).toString('utf8');
      resolve(judge(opts.wire, job.expected, status, body, complete, error, ttft, totalMs, bytes));
    };

    const req = http.request({
      host: opts.host,
      port: opts.port,
      method: spec.method,
      path: spec.path,
      headers: spec.body
        ? { ...spec.headers, 'Content-Length': String(Buffer.byteLength(spec.body)) }
        : spec.headers,
      agent,
    });
    const timer = setTimeout(() => {
      req.destroy(new Error(`no end within ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);
    req.on('socket', (socket) => {
      if (!socket.connecting) return; // a kept-alive connection
      socket.once('connect', () => {
        connects.last = performance.now();
        if (connects.count++ === 0) connects.first = connects.last;
      });
    });
    req.on('error', (err) => finish(false, err.message));
    req.on('response', (res) => {
      status = res.statusCode ?? 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        bytes += c.length;
        if (Number.isNaN(ttft)) {
          if (pattern === undefined) {
            if (c.length > 0 && status === 200) {
              ttft = performance.now() - t0;
              opts.onFirstToken?.();
            }
          } else {
            const from = Math.max(0, scan.length - 32);
            scan += decoder.decode(c, { stream: true });
            pattern.lastIndex = 0;
            if (pattern.test(scan.slice(from))) {
              ttft = performance.now() - t0;
              scan = '';
              opts.onFirstToken?.();
            }
          }
        }
      });
      res.on('end', () => finish(res.complete));
      res.on('error', (err) => finish(false, err.message));
      res.on('close', () => finish(res.complete, res.complete ? undefined : 'connection cut'));
    });
    req.end(spec.body);
  });
}

/** Parse a finished body and compare its answer with the expected one. */
function judge(
  wire: Wire,
  expected: Expected,
  status: number,
  body: string,
  complete: boolean,
  error: string | undefined,
  ttftMs: number,
  totalMs: number,
  bytes: number,
): StreamResult {
  const base = { status, ttftMs, totalMs, tokens: expected.tokens.length, bytes };
  if (status !== 200) {
    return {
      ...base,
      ok: false,
      error: error ?? `HTTP ${status}: ${body.slice(0, 200)}`,
      tokensLost: expected.tokens.length,
      mismatch: true,
      replacementChars: 0,
    };
  }
  let answer: string;
  let ended: boolean;
  let inBandError: string | undefined;
  if (wire === 'text') {
    answer = body;
    ended = complete;
  } else {
    const parsed = wire === 'proxy-sse' ? parseProxySse(body) : parseOpenAiSse(body);
    answer = parsed.answer;
    ended = parsed.ended && complete;
    inBandError = parsed.error;
  }
  const lost = tokensLost(expected, answer);
  const mismatch = answer !== expected.text;
  let fffd = 0;
  for (let i = answer.indexOf('\ufffd'); i !== -1; i = answer.indexOf('\ufffd', i + 1)) fffd++;
  const failure =
    error ?? inBandError ?? (ended ? undefined : 'the stream did not end cleanly') ?? undefined;
  return {
    ...base,
    ok: failure === undefined && !mismatch,
    error: failure ?? (mismatch ? 'answer differs from the expected text' : undefined),
    tokensLost: lost,
    mismatch,
    replacementChars: fffd,
  };
}

/** Expected tokens not delivered in order: the length of the longest matching token prefix. */
export function tokensLost(expected: Expected, got: string): number {
  if (got === expected.text) return 0;
  let pos = 0;
  let matched = 0;
  for (const t of expected.tokens) {
    if (!got.startsWith(t, pos)) break;
    pos += t.length;
    matched++;
  }
  return expected.tokens.length - matched;
}

function sseBlocks(body: string): Array<{ event: string | undefined; data: string }> {
  const out: Array<{ event: string | undefined; data: string }> = [];
  for (const block of body.split('\n\n')) {
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('data:')) data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
      else if (line.startsWith('event:')) event = line.slice(6).trim();
    }
    if (data.length > 0) out.push({ event, data: data.join('\n') });
  }
  return out;
}

/** /chat-stream SSE: unnamed events carry answer tokens; `done` ends; `error` fails. */
export function parseProxySse(body: string): { answer: string; ended: boolean; error?: string } {
  let answer = '';
  let ended = false;
  let error: string | undefined;
  for (const ev of sseBlocks(body)) {
    if (ev.event === undefined || ev.event === 'message') {
      try {
        answer += (JSON.parse(ev.data) as { content: string }).content;
      } catch {
        error = `malformed event: ${ev.data.slice(0, 80)}`;
      }
    } else if (ev.event === 'done') ended = true;
    else if (ev.event === 'error') error = `in-band error: ${ev.data}`;
  }
  return { answer, ended, error };
}

/** DeepSeek / OpenAI chunks: `choices[0].delta.content`; `[DONE]` ends; `{error}` fails. */
export function parseOpenAiSse(body: string): { answer: string; ended: boolean; error?: string } {
  let answer = '';
  let ended = false;
  let error: string | undefined;
  for (const ev of sseBlocks(body)) {
    if (ev.data === '[DONE]') {
      ended = true;
      continue;
    }
    let chunk: { error?: unknown; choices?: Array<{ delta?: { content?: string | null } }> };
    try {
      chunk = JSON.parse(ev.data) as typeof chunk;
    } catch {
      error = `malformed event: ${ev.data.slice(0, 80)}`;
      continue;
    }
    if (chunk.error) error = `in-band error: ${ev.data}`;
    const c = chunk.choices?.[0]?.delta?.content;
    if (typeof c === 'string') answer += c;
  }
  return { answer, ended, error };
}
