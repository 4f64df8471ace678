// service.ts: the chat service. Builds one ChatStream per request from the shared upstream
// client and settings, enforces the global stream cap and draining, tracks active streams for
// shutdown, and writes the one log line per finished stream.

import type { Config } from './config';
import { ProxyError, secretRedactor } from './errors';
import type { Logger } from './log';
import type { Metrics } from './metrics';
import {
  ChatStream,
  type EngineSettings,
  type RunEnd,
  type StreamListener,
} from './stream/chat-stream';
import type { UpstreamClient } from './upstream/client';
import type { UpstreamBody } from './upstream/request';

export interface StreamMeta {
  requestId: string;
  route: string;
  format: string;
  model: string;
  /** Filled in by the response side when the stream ends. */
  bytesOut?: () => number;
  status?: () => number;
  peakBuffered?: () => number;
  /** On shutdown: leave the stream for another worker; false if it cannot be handed off. */
  handoff?: () => boolean;
  /** Called (as a method) once the stream has ended normally, after its log line. */
  ended?: () => void;
  /**
   * Called (as a method) when the stream failed by a bug (see run), in place of the rejection:
   * with it, run()'s promise never rejects.
   */
  failed?: (err: unknown) => void;
}

export function engineSettings(c: Config): EngineSettings {
  return {
    retryMax: c.retryMax,
    retryBaseDelayMs: c.retryBaseDelayMs,
    retryMaxDelayMs: c.retryMaxDelayMs,
    retryAfterMaxMs: c.retryAfterMaxMs,
    connectTimeoutMs: c.connectTimeoutMs,
    headersTimeoutMs: c.headersTimeoutMs,
    idleTimeoutMs: c.idleTimeoutMs,
    streamMaxDurationMs: c.streamMaxDurationMs,
    upstreamResumeMax: c.upstreamResumeMax,
    maxEventBytes: c.maxEventBytes,
    // The head goes out alone when a heartbeat would be due: proxies see the stream open.
    headHoldMs: c.heartbeatMs,
    redact: secretRedactor(c.deepseekApiKey),
  };
}

export class ChatService implements RunEnd<StreamMeta> {
  readonly active = new Set<ChatStream>();
  private readonly handoffs = new Map<ChatStream, StreamMeta>();
  draining = false;
  private readonly settings: EngineSettings;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly config: Config,
    readonly client: UpstreamClient,
    private readonly log: Logger,
    private readonly metrics?: Metrics,
  ) {
    this.settings = engineSettings(config);
  }

  /** Throws `overloaded` or `shutting_down` when a new stream may not start (`more` are pending). */
  admit(more = 0): void {
    if (this.draining) {
      throw new ProxyError(
        'shutting_down',
        'the server is shutting down; retry on another instance',
        {
          retryAfterS: 1,
        },
      );
    }
    if (this.active.size + more >= this.config.maxConcurrentStreams) {
      throw new ProxyError('overloaded', 'too many concurrent streams; retry shortly', {
        retryAfterS: 1,
      });
    }
  }

  /** How many more streams the global cap lets in now. */
  room(): number {
    return Math.max(0, this.config.maxConcurrentStreams - this.active.size);
  }

  /**
   * Start a stream; resolves when it has ended (listener told). Rejects only on a bug: bind()
   * throwing, or the listener throwing from fail(); the stream is forgotten either way. Not an
   * async function: one suspended for each stream's length kept a generator and its registers.
   */
  run(
    body: UpstreamBody,
    listener: StreamListener,
    meta: StreamMeta,
    bind: (s: ChatStream) => void,
    opts?: {
      /** Continue an answer that starts with this text (a stream taken over from a worker). */
      prefix?: string;
      /** The tokens before its end, reasoning included, for max_tokens. */
      prefixTokens?: number;
      /** Of those, the answer's. */
      prefixAnswerTokens?: number;
      /** `body` already serialised; sent as is. */
      json?: string;
    },
  ): Promise<void> {
    const stream = new ChatStream(this.client, this.settings, body, listener, opts);
    this.active.add(stream);
    this.metrics?.activeStreams.inc();
    if (meta.handoff) this.handoffs.set(stream, meta);
    try {
      bind(stream);
    } catch (err) {
      stream.stats.outcome = 'failed';
      stream.stats.errorCode = 'internal_error';
      const e = err instanceof Error ? err : new Error(String(err));
      if (!meta.failed) {
        this.ended(stream, meta);
        return Promise.reject(e);
      }
      this.settled(stream, meta, [e]);
      return Promise.resolve();
    }
    // Forgotten however run() ends (runEnded): a listener that throws from fail() comes as a
    // bug. What runs after it (the log line, the meta's end hook) may throw too: the same bug
    // path; the promise rejects only when no meta.failed takes it.
    return stream.run(this, meta);
  }

  /** The engine's: the stream's run() ended; `bugs` is what escaped it. */
  runEnded(stream: ChatStream, meta: StreamMeta, bugs: unknown[]): void {
    this.settled(stream, meta, bugs);
  }

  /**
   * A stream's end: the service's bookkeeping, then, after a normal end, the meta's end hook
   * (it ends the journal entry), each run even if what came before threw. The first bug goes
   * to failed(), any later one to the log.
   */
  private settled(stream: ChatStream, meta: StreamMeta, bugs: unknown[]): void {
    const normal = bugs.length === 0;
    try {
      this.ended(stream, meta);
    } catch (err) {
      bugs.push(err);
    }
    if (normal) {
      try {
        meta.ended?.();
      } catch (err) {
        bugs.push(err);
      }
    }
    if (bugs.length === 0) return;
    for (const later of bugs.slice(1)) this.reportBug(meta.requestId, later);
    this.failed(meta, bugs[0]);
  }

  /**
   * A bug in a stream, or in what ends it: to the meta's failed() when it has one, else the
   * promise run() returned rejects. What failed() itself throws is logged, never thrown: nothing
   * would be left to catch it.
   */
  private failed(meta: StreamMeta, err: unknown): void {
    if (!meta.failed) throw err;
    try {
      meta.failed(err);
    } catch (e) {
      this.reportBug(meta.requestId, err);
      this.reportBug(meta.requestId, e);
    }
  }

  /** A bug with nowhere left to go: one line at error level. */
  reportBug(requestId: string, err: unknown): void {
    this.log.error(
      {
        requestId,
        err:
          err instanceof Error
            ? { message: err.message, stack: err.stack }
            : { message: String(err) },
      },
      'unhandled error',
    );
  }

  /** Forget the stream and write its log line; a drain waiting for the last one goes on. */
  private ended(stream: ChatStream, meta: StreamMeta): void {
    this.active.delete(stream);
    this.handoffs.delete(stream);
    try {
      this.metrics?.activeStreams.dec();
      this.logFinished(stream, meta);
    } finally {
      // Even when the bookkeeping above threw (a bug): a drain would wait its whole grace.
      if (this.active.size === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
    }
  }

  /**
   * Graceful drain: refuse new streams, let active ones finish within `graceMs`, then hand the
   * rest to another worker (shared journal) or end them with an in-band `shutting_down` error.
   */
  async drain(graceMs: number): Promise<void> {
    this.draining = true;
    if (this.active.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        this.idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    // Retry-After for a stream stopped before its head went out (its answer is the JSON 503).
    const err = new ProxyError('shutting_down', 'the server is shutting down', { retryAfterS: 1 });
    for (const s of [...this.active]) {
      if (this.handoffs.get(s)?.handoff?.()) continue;
      s.stop(err);
    }
  }

  private logFinished(s: ChatStream, meta: StreamMeta): void {
    const st = s.stats;
    const durationMs = Date.now() - st.startedAt;
    // A bug inside the stream: the same one line, at error level, with what it was.
    const cause = st.cause;
    const level = cause === undefined ? 'info' : 'error';
    this.log[level](
      {
        requestId: meta.requestId,
        route: meta.route,
        format: meta.format,
        model: meta.model,
        status: meta.status?.() ?? 0,
        outcome: st.outcome,
        errorCode: st.errorCode,
        finishReason: st.finishReason,
        ttftMs: st.ttftMs,
        durationMs,
        tokens: st.tokens,
        bytesIn: st.bytesIn,
        bytesOut: meta.bytesOut?.() ?? 0,
        peakBuffered: meta.peakBuffered?.() ?? 0,
        retries: st.retries,
        resumes: st.resumes,
        upstreamRequests: st.upstreamRequests,
        ...(cause === undefined
          ? {}
          : {
              err:
                cause instanceof Error
                  ? { message: cause.message, stack: cause.stack }
                  : { message: String(cause) },
            }),
      },
      'stream finished',
    );
    // After the log line: a bug in the metrics must not lose it.
    this.metrics?.streamFinished(meta.route, st, durationMs);
  }
}
