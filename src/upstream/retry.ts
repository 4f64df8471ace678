// upstream/retry.ts: when to retry an upstream request that failed before the first token, and
// how long to wait. Rules are a flat table; backoff is a pure function (SPEC "Upstream client").

export type FailureKind =
  | 'connect' // could not connect, DNS, refused, connect timeout
  | 'reset' // connection reset or closed early
  | 'headers_timeout'
  | 'idle_timeout'
  | 'protocol' // garbage where SSE was expected
  | 'cut_off' // finish_reason insufficient_system_resource
  | 'internal' // a bug on our side, not the network
  | 'http'; // a non-200 status, see `status`

export interface Failure {
  kind: FailureKind;
  status?: number;
}

/** Each rule: does this failure, before any token reached the client, earn another attempt? */
const RETRY_RULES: ReadonlyArray<[(f: Failure) => boolean, boolean]> = [
  [(f) => f.kind === 'connect', true], // nothing was sent upstream; safe and usually brief
  [(f) => f.kind === 'reset', true], // socket died before any token: try a fresh one
  [(f) => f.kind === 'headers_timeout', true], // upstream stuck in queue; another try may land
  [(f) => f.kind === 'idle_timeout', true], // stalled before the first token
  [(f) => f.kind === 'cut_off', true], // cut off before a token: a fresh generation is free
  [(f) => f.kind === 'protocol', false], // the same upstream will likely say the same garbage
  [(f) => f.kind === 'internal', false], // our bug: a retry would hit it again
  [(f) => f.status === 408, true], // request timeout
  [(f) => f.status === 429, true], // rate or concurrency limit: wait and try again
  [(f) => f.status === 500, true], // server error
  [(f) => f.status === 502, true], // bad gateway in front of DeepSeek
  [(f) => f.status === 503, true], // overloaded
  [(f) => f.status === 504, true], // gateway timeout
  // 400, 401, 402, 422 and everything else: the same request would fail the same way.
];

export function isRetryable(f: Failure): boolean {
  for (const [matches, retry] of RETRY_RULES) if (matches(f)) return retry;
  return false;
}

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
  /** Cap on a server-requested wait (Retry-After); beyond it we wait the cap. */
  retryAfterMaxMs: number;
}

/**
 * Delay before retry number `attempt` (0 for the first retry): the server's `retry-after-ms` or
 * `Retry-After` (seconds or an HTTP date) when present, within the cap; else exponential backoff
 * with full jitter, random in [0, min(max, base * 2^attempt)].
 */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions,
  headers?: Record<string, unknown>,
  random: () => number = Math.random,
  now: number = Date.now(),
): number {
  const requested = headers ? retryAfterMs(headers, now) : undefined;
  if (requested !== undefined) return Math.min(requested, opts.retryAfterMaxMs);
  const ceiling = Math.min(opts.maxMs, opts.baseMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

/** The wait a response asks for, in ms, from `retry-after-ms` or `retry-after`. */
export function retryAfterMs(headers: Record<string, unknown>, now: number = Date.now()) {
  const ms = headers['retry-after-ms'];
  if (typeof ms === 'string' && /^\d+(\.\d+)?$/.test(ms.trim())) return Number(ms);
  const ra = headers['retry-after'];
  if (typeof ra !== 'string' || ra.trim() === '') return undefined;
  const v = ra.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v) * 1000;
  const date = Date.parse(v);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}
