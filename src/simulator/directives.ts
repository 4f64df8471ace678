// simulator/directives.ts: fault injection driven by the prompt, so a test (or a front-end
// developer) can script the upstream *through the proxy*. A prompt such as
//   "hello [[status=503 retry-after=1 times=2]]"
// makes the first two requests with that prompt answer 503, and the third succeed.

export interface Directives {
  /** How many requests with this prompt get the faults below (default 1). */
  times: number;
  status?: number;
  retryAfter?: string;
  retryAfterMs?: string;
  /** Error body as an HTML page instead of JSON. */
  html: boolean;
  /** Answer 200 with an HTML page (a captive proxy, a misrouted request). */
  html200: boolean;
  /** Wait this long before sending response headers. */
  stallHeadersMs: number;
  /** After headers, send `: keep-alive` comments for this long before the first chunk. */
  queueMs: number;
  /** Interval of keep-alive comments while queued or stalled (0: none while stalled). */
  keepAliveMs: number;
  /** After headers and keep-alives, wait this long (silently) before the first chunk. */
  stallFirstMs: number;
  /** After `stallAfter` content tokens, wait `stallMs` silently (or with keep-alives). */
  stallAfter?: number;
  stallMs: number;
  /** Destroy the socket after N content tokens. */
  reset?: number;
  /** Destroy the socket after N bytes of body. */
  cut?: number;
  /** Split every write into pieces of this many bytes. */
  frag: number;
  /** Write the whole body in one write. */
  coalesce: boolean;
  lineEnding: '\n' | '\r\n' | '\r';
  bom: boolean;
  /** Emit a malformed event after N content tokens. */
  malformed?: number;
  /** End with this finish reason after `finishAfter` tokens (e.g. insufficient_system_resource). */
  finish?: string;
  finishAfter?: number;
  /** Per-token pacing, overriding the simulator's default. */
  delayMs?: number;
  /** Omit `data: [DONE]`. */
  noDone: boolean;
}

const PATTERN = /\[\[([^\]]*)\]\]/;

export function parseDirectives(prompt: string): Directives | undefined {
  const m = PATTERN.exec(prompt);
  if (!m) return undefined;
  const kv = new Map<string, string>();
  for (const part of m[1]!.trim().split(/\s+/)) {
    if (!part) continue;
    const eq = part.indexOf('=');
    kv.set(eq === -1 ? part : part.slice(0, eq), eq === -1 ? '1' : part.slice(eq + 1));
  }
  const num = (k: string): number | undefined => {
    const v = kv.get(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    return Number.isFinite(n) ? n : undefined;
  };
  const flag = (k: string) => kv.has(k) && kv.get(k) !== '0';
  return {
    times: num('times') ?? 1,
    // Only what an HTTP status can be: Node throws on anything else, and the client saw a reset.
    status: statusOf(num('status')),
    retryAfter: kv.get('retry-after'),
    retryAfterMs: kv.get('retry-after-ms'),
    html: flag('html'),
    html200: flag('html200'),
    stallHeadersMs: num('stall-headers') ?? 0,
    queueMs: num('queue') ?? 0,
    keepAliveMs: num('ka') ?? 0,
    stallFirstMs: num('stall-first') ?? 0,
    stallAfter: num('stall-after'),
    stallMs: num('stall') ?? 0,
    reset: num('reset'),
    cut: num('cut'),
    // Whole bytes: a fraction below 1 split every write into nothing, forever.
    frag: Math.max(0, Math.floor(num('frag') ?? 0)),
    coalesce: flag('coalesce'),
    lineEnding: flag('crlf') ? '\r\n' : flag('cr') ? '\r' : '\n',
    bom: flag('bom'),
    malformed: num('malformed'),
    finish: kv.get('finish'),
    finishAfter: num('finish-after'),
    delayMs: num('delay'),
    noDone: flag('nodone'),
  };
}

function statusOf(n: number | undefined): number | undefined {
  return n !== undefined && Number.isInteger(n) && n >= 100 && n <= 599 ? n : undefined;
}
