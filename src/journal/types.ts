// journal/types.ts: the resume journal's shapes and the small interface every store implements
// (memory, Redis). One contract test suite runs against all of them.

/** One numbered event of a stream, format-agnostic: formatters turn it into SSE, text, NDJSON. */
export interface JournalEvent {
  seq: number;
  kind: 'content' | 'reasoning' | 'done' | 'error';
  /** Token text for content/reasoning; a JSON object string for done/error. */
  data: string;
}

/** One letter per kind: how the Redis store keeps an event's kind (a stream entry's field). */
export const KIND_LETTER: Readonly<Record<JournalEvent['kind'], string>> = {
  content: 'c',
  reasoning: 'r',
  done: 'd',
  error: 'e',
};
export const LETTER_KIND: Readonly<Record<string, JournalEvent['kind']>> = {
  c: 'content',
  r: 'reasoning',
  d: 'done',
  e: 'error',
};

/** `handoff`: its process shut down mid-answer; the next resume, on any worker, takes it over. */
export type StreamState = 'live' | 'done' | 'failed' | 'handoff';

export interface StreamMeta {
  id: string;
  /** Hash of the request that created the stream: the same id with another body is a conflict. */
  fingerprint: string;
  state: StreamState;
  /** Highest seq appended. */
  lastSeq: number;
  /** The stream outgrew its journal budget: it cannot be resumed. */
  overflow: boolean;
  /** The upstream request body (JSON), so another worker can continue the stream. */
  request?: string;
}

export interface SubscribeHandlers {
  /** Events after the requested seq, in order: first the stored ones, then live ones. */
  event(ev: JournalEvent): void;
  /** The stream's last event was delivered (or the stream is gone). */
  end(): void;
}

export interface Subscription {
  close(): void;
}

/** What create() answers: the id is this stream's now, or it was taken (and by what). */
export type Claim =
  { readonly created: true } | { readonly created: false; readonly meta: StreamMeta };

export interface JournalStore {
  /** True when other processes see this journal (Redis): only then can a stream be handed off. */
  readonly shared: boolean;
  /**
   * Claim `id` for a new stream, atomically. If it exists, its meta comes back instead. A store
   * that can answer at once (the in-memory one) returns the claim itself, not a promise: the
   * route then starts the upstream request in the same turn (docs/BENCHMARKS.md).
   */
  create(id: string, fingerprint: string, request?: string): Claim | PromiseLike<Claim>;
  meta(id: string): Promise<StreamMeta | undefined>;
  /**
   * Append events (called once per upstream read, not per token). Fire and forget, in order.
   * Returns false when the stream is over its byte budget (it is then marked overflow).
   */
  append(id: string, events: JournalEvent[], bytes: number): boolean;
  /** Mark the stream finished; it stays readable until its TTL. */
  finish(id: string, state: 'done' | 'failed'): void;
  /** All stored events after `afterSeq` (no following). */
  read(id: string, afterSeq: number): Promise<JournalEvent[]>;
  /** Mark a live stream as handed off (its process is shutting down). */
  handoff(id: string): void;
  /** Atomically take over a handed-off stream; true for exactly one caller. */
  claim(id: string): Promise<boolean>;
  /** Forget a stream (it failed before it began: a retry with the same id starts afresh). */
  remove(id: string): void;
  /** Replay events after `afterSeq`, then follow live ones until the stream ends. */
  subscribe(id: string, afterSeq: number, handlers: SubscribeHandlers): Subscription;
  /** How many subscribers follow the stream, in any process. */
  followers(id: string): Promise<number>;
  /** Reachable and working (for /readyz). */
  ping(): Promise<boolean>;
  shutdown(): Promise<void>;
}

export interface JournalLimits {
  /** How long a finished stream's events are kept (RESUME_TTL_S). */
  ttlMs: number;
  /**
   * How long a live stream's keys live past its last write (the Redis store): at least the
   * longest a stream can run, so a stream quiet for longer than ttlMs (a long upstream queue)
   * or a reader following it for longer is not forgotten while it runs. Default: ttlMs.
   */
  liveTtlMs?: number;
  maxBytesPerStream: number;
  maxBytesTotal: number;
}

/**
 * Budget charge for one event: its text plus a fixed overhead for the record. The memory store
 * keeps a short token in about 40 B of heap all told (string header, two array slots; measured
 * with 200,000 tokens), so the budget errs on the safe side.
 */
export const EVENT_OVERHEAD_BYTES = 48;
