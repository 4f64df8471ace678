// stream/chat-stream.ts: one chat stream from request to finish. Owns the upstream attempts
// (retry before the first token, seamless resume through prefix completion after it), the time
// limits (headers, idle, total), backpressure to the upstream socket and abort. Everything it
// learns goes to one StreamListener; it never touches the client response itself.

import type { Readable } from 'node:stream';
import { isAxiosError } from 'axios';
import { ProxyError, withMessage, type ErrorCode } from '../errors';
import { CHAT_PATH, CUT_OFF_FINISH, NORMAL_FINISH, PREFIX_CHAT_PATH } from '../upstream/deepseek';
import { UpstreamAbort, type UpstreamClient, type UpstreamResponse } from '../upstream/client';
import { prefixContinuationBody, remainingMaxTokens, type UpstreamBody } from '../upstream/request';
import { backoffDelay, isRetryable, type Failure } from '../upstream/retry';
import { Decoder, type SseDecoderHandlers } from './decoder';
import { Deadline, deadlinesFor, type Deadlines } from './deadlines';
import {
  ByteScan,
  interpret,
  interpretBytes,
  type DeltaSink,
  type TokenSource,
  type Usage,
} from './interpreter';

export interface StreamListener {
  /**
   * The response begins: with the first token (or the end of an answer that has none), or when
   * the upstream accepted the request (HTTP 200) `headHoldMs` ago and no token came yet. Until
   * then a failure is fail(err, false) (a JSON error with its status) and a retry is invisible.
   * A flush() follows at the end of the upstream read that brings the first token (or at once
   * after the hold), so the listener may hold its head back and send it with the first tokens:
   * one socket write instead of two.
   */
  open(): void;
  /**
   * An answer token. Hot path: buffer it; flush() follows once per upstream read. `src`: its
   * bytes as the upstream sent them, when the token is exactly one upstream token read on the
   * byte path (see TokenSource: valid during this call only).
   */
  content(text: string, src?: TokenSource): void;
  /** A reasoning token (thinking mode). */
  reasoning(text: string, src?: TokenSource): void;
  /** Optional: every upstream chunk's data verbatim, for pass-through formats. */
  chunk?(data: string): void;
  /**
   * Optional, with chunk(): a chunk's data as the upstream's bytes, `buf[start, end)`, for the
   * chunks read on the byte path. The decoder guarantees the line around them: `data:` (and one
   * space, when there was one) right before `start`, LF LF at `end`. `buf` is not reused by Node;
   * it may be kept until the next flush().
   */
  chunkBytes?(buf: Buffer, start: number, end: number): void;
  /**
   * Write what the last upstream read produced, as one write. Return false when the client is
   * not keeping up: the upstream socket pauses until resume().
   */
  flush(): boolean;
  /** The answer finished normally. */
  end(finishReason: string, usage: Usage | undefined): void;
  /**
   * Optional: a retry before the response began. Drop what was handed over and not written (the
   * failed attempt's chunks before its first token), or the retry's would follow them.
   */
  discard?(): void;
  /** The stream failed; `opened` tells whether open() was called before. */
  fail(err: ProxyError, opened: boolean): void;
}

/** afterAttempt(): the stream is over. */
const NEXT_STOP = -1;
/** afterAttempt(): the next attempt at once (a wait of 0 ms still waits for a timer). */
const NEXT_NOW = -2;

/** Told by run() how the stream's run ended, before run()'s promise settles. */
export interface RunEnd<T> {
  /** `bugs`: what escaped run() (a listener's fail() threw), or nothing. May throw. */
  runEnded(stream: ChatStream, tag: T, bugs: unknown[]): void;
}

export interface EngineSettings {
  retryMax: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  retryAfterMaxMs: number;
  connectTimeoutMs: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  streamMaxDurationMs: number;
  upstreamResumeMax: number;
  maxEventBytes: number;
  /**
   * How long after the upstream's HTTP 200 the response may wait for the first token before it
   * begins anyway (so clients and reverse proxies see it open during a long queue).
   */
  headHoldMs: number;
  /**
   * Hides the DeepSeek key in a failure's message before the client sees it (the upstream's own
   * error text, or an event of its that we quote, could carry it). Default: shown as is.
   */
  redact?: (text: string) => string;
}

export type Outcome =
  'running' | 'completed' | 'failed' | 'client_aborted' | 'handed_off' | 'aborted';

export interface StreamStats {
  startedAt: number;
  ttftMs: number | undefined;
  tokens: number;
  bytesIn: number;
  retries: number;
  resumes: number;
  upstreamRequests: number;
  outcome: Outcome;
  errorCode: ErrorCode | undefined;
  finishReason: string | undefined;
  /** What an internal_error came from (for the log line only). */
  cause?: unknown;
}

/** How one upstream attempt ended. */
type AttemptResult =
  | { ok: true }
  | { ok: false; failure: Failure; error: ProxyError; headers?: Record<string, unknown> };

const ABORT_HEADERS = Symbol('headers timeout');
const ABORT_STOP = Symbol('stop');
const MAX_ERROR_BODY = 16 * 1024;
const FLUSH_NOW_BYTES = 64 * 1024;
/**
 * answerParts joins its tokens this many at a time (compactParts). The memory journal joins its
 * texts as often: a token's own string is then garbage after 32 more tokens in both, not kept
 * for the stream's life (40-50 B per token while the stream is open).
 */
const COMPACT_PARTS = 32;

/**
 * The streams whose upstream body had data this event-loop turn, flushed together by one
 * setImmediate at its end: one Immediate per turn for all streams, not one per stream per read
 * (with many slow streams, nearly every token is a read of its own).
 */
let turnStreams: ChatStream[] = [];
/** The other array, reused: a flush that makes a stream read queues it for the next turn. */
let spareTurnStreams: ChatStream[] = [];

function awaitEndOfTurn(stream: ChatStream): void {
  if (turnStreams.length === 0) setImmediate(endTurn);
  turnStreams.push(stream);
}

function endTurn(): void {
  const streams = turnStreams;
  turnStreams = spareTurnStreams;
  let threw = false;
  let first: unknown;
  for (let i = 0; i < streams.length; i++) {
    // endOfTurn fails its own stream on a listener's throw; what still escapes is a fault in
    // failing it. The other streams flush all the same; then it goes on as from an Immediate.
    try {
      streams[i]!.endOfTurn();
    } catch (err) {
      if (!threw) first = err;
      threw = true;
    }
  }
  streams.length = 0;
  spareTurnStreams = streams;
  if (threw) throw first;
}

export class ChatStream implements DeltaSink {
  readonly stats: StreamStats;
  private readonly client: UpstreamClient;
  private readonly s: EngineSettings;
  private readonly body: UpstreamBody;
  /** `body` as JSON, when the caller already serialised it (sent as is: no second stringify). */
  /** `body` serialised, until it is sent (a retry serialises `body` again: the same bytes). */
  private json: string | undefined;
  private readonly listener: StreamListener;
  private readonly forwardChunks: boolean;
  private opened = false;
  private stopped = false;
  private paused = false;
  /** The answer relayed so far, token by token (joined only for an upstream resume). */
  private readonly answerParts: string[] = [];
  /** Tokens pushed since answerParts was last compacted (see compactParts). */
  private partsSinceCompact = 0;
  private sentToken = false;
  /** A tool-call delta came: the answer can no longer be continued upstream. */
  private toolCalled = false;
  /** Answer tokens relayed (one per content chunk, as DeepSeek sends them). */
  private answerTokens = 0;
  /** Tokens generated before this engine began (a stream taken over), reasoning included. */
  private readonly tokensBefore: number;
  /** At a continuation: the tokens before it, all and answer only (see spliceUsage). */
  private splicedOutput = 0;
  private splicedAnswer = 0;
  private finishReason: string | undefined;
  private usageSeen: Usage | undefined;
  private controller: UpstreamAbort | undefined;
  private upstreamBody: Readable | undefined;
  /** The attempt whose upstream body is being read; its events count only while it is. */
  reading: Reading | undefined = undefined;
  /** The wait before the next attempt (a retry's backoff), while it runs. */
  private sleepTimer: NodeJS.Timeout | undefined;
  /** The stream's total time limit (running from run() to its end). */
  private readonly total: Deadline<ChatStream>;
  /** run()'s caller: told how the run ended (runEnded), then run()'s promise settles. */
  private runEnd: RunEnd<unknown> | undefined;
  private runTag: unknown;
  private runResolve: (() => void) | undefined;
  private runReject: ((err: unknown) => void) | undefined;
  /** The upstream idle limit (running while a body is read). */
  private readonly idle: Deadline<ChatStream>;
  /** This attempt's chunks wait until one carries something (see releaseHeld). */
  private holdChunks = false;
  private held: string | undefined;
  /** A chunk before the first token reached the listener (and was not discarded). */
  private forwardedPreToken = false;
  /** Something was handed to the listener since the last flush. */
  private dirty = false;
  /** The first half of a surrogate pair, waiting for its token's continuation (joinPair). */
  private splitPair = '';
  private splitPairReasoning = false;
  /** afterAttempt() chose a continuation: run() counts it when it is about to be sent. */
  private resuming = false;
  /** The first token is waiting: it is written at the end of the read that brought it. */
  private firstPending = false;
  /** Begins the response if no token came within headHoldMs of the upstream's first 200. */
  private headTimer: NodeJS.Timeout | undefined;
  /** What the listener's end() threw, rethrown by the loop (a bug ends this stream only). */
  private endError: unknown;
  /** Write what this turn's upstream reads produced; pause the upstream if the client is full. */
  private unflushed = 0;
  /**
   * The upstream body had data this event-loop turn: the idle deadline was restarted and the
   * stream is in the turn's queue (see endTurn), which clears this.
   */
  turnSeen = false;
  /** The end of an event-loop turn in which the upstream body had data (see endTurn). */
  endOfTurn(): void {
    this.turnSeen = false;
    this.flushNow();
  }
  /**
   * Hand what was read to the listener's client now. A listener's throw (a bug) ends this
   * stream only, as in read(): the attempt being read fails, or, between attempts (its end came
   * in the same turn as its tokens; a continuation is on its way), the stream stops.
   */
  private flushNow(): void {
    try {
      this.flushListener();
    } catch (err) {
      if (this.reading !== undefined) this.settle(internalFailure(err));
      else this.stop(new ProxyError('internal_error', 'internal error', { cause: err }));
    }
  }
  private flushListener(): void {
    // An ended stream's listener was told everything (end or fail wrote the rest).
    if (this.stats.outcome !== 'running') return;
    this.firstPending = false;
    this.unflushed = 0;
    // Before the response began, what was handed over waits (chunks before the first token).
    if (!this.dirty || !this.opened) return;
    this.dirty = false;
    if (!this.listener.flush()) this.pause();
  }

  constructor(
    client: UpstreamClient,
    settings: EngineSettings,
    body: UpstreamBody,
    listener: StreamListener,
    opts: {
      /** Continue this answer (chat prefix completion) instead of starting a new one. */
      prefix?: string;
      /** The tokens before `prefix`'s end, reasoning included (they count against max_tokens). */
      prefixTokens?: number;
      /** Of those, the answer's (the tokens of `prefix` itself). */
      prefixAnswerTokens?: number;
      /** `body` already serialised. */
      json?: string;
    } = {},
  ) {
    if (opts.prefix) this.answerParts.push(opts.prefix);
    this.answerTokens = opts.prefixAnswerTokens ?? opts.prefixTokens ?? 0;
    this.tokensBefore = opts.prefixTokens ?? 0;
    this.json = opts.json;
    this.client = client;
    this.s = settings;
    this.idle = new Deadline(deadlinesFor(IDLE_LISTS, settings.idleTimeoutMs, idleTimeout), this);
    this.total = new Deadline(
      deadlinesFor(TOTAL_LISTS, settings.streamMaxDurationMs, totalTimeout),
      this,
    );
    this.body = body;
    this.listener = listener;
    this.forwardChunks = listener.chunk !== undefined;
    this.stats = {
      startedAt: Date.now(),
      ttftMs: undefined,
      tokens: 0,
      bytesIn: 0,
      retries: 0,
      resumes: 0,
      upstreamRequests: 0,
      outcome: 'running',
      errorCode: undefined,
      finishReason: undefined,
    };
  }

  /**
   * Run to the end; every failure goes to the listener. Without `end`, rejects only on a bug in
   * the listener (its fail() threw). With `end`, that bug goes to `end` instead, told here before
   * the promise settles with `tag` and what escaped (nothing, or the bug), and the promise
   * rejects only if `end` throws: a caller's `.then(ok, err)` kept a derived promise, its
   * reaction and two closures for each open stream.
   *
   * Not an async function: the attempts are driven by callbacks (step, attempted). An async
   * function suspended for the stream's length kept a generator, its registers, and a promise,
   * a reaction and two closures for each await in the chain to the upstream body's end: about
   * 800 B per open stream in a heap snapshot, of the 2 KB the proxy held over a bare pipe.
   */
  run<T>(end?: RunEnd<T>, tag?: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.runEnd = end as RunEnd<unknown> | undefined;
      this.runTag = tag;
      this.runResolve = resolve;
      this.runReject = reject;
      this.total.start();
      this.step();
    });
  }

  /** The next attempt, unless the stream is over. Never throws: a bug ends this stream only. */
  private step(): void {
    try {
      if (this.stopped) {
        this.runOver([]);
        return;
      }
      if (this.resuming) {
        // Counted once its wait is over: a continuation never sent is not one.
        this.resuming = false;
        this.stats.resumes++;
      }
      this.attempt();
    } catch (err) {
      this.bug(err);
    }
  }

  /** An attempt ended with `result`: the next one, a wait, or the end. Never throws. */
  private attempted(result: AttemptResult): void {
    let next: number;
    try {
      next = this.afterAttempt(result);
    } catch (err) {
      this.bug(err);
      return;
    }
    if (next === NEXT_STOP) this.runOver([]);
    // A stop from inside the listener (its discard()) is seen now, not after the wait.
    else if (next === NEXT_NOW || this.stopped) this.step();
    else this.sleepTimer = setTimeout(wakeUp, next, this);
  }

  /** The wait before the next attempt is over (or cut short by a stop). */
  wakeUp(): void {
    if (this.sleepTimer === undefined) return;
    clearTimeout(this.sleepTimer);
    this.sleepTimer = undefined;
    this.step();
  }

  /** A bug of ours or of the listener's, thrown in the loop: this stream fails, nothing else. */
  private bug(err: unknown): void {
    if (this.stats.outcome === 'failed') {
      // The listener was told of the failure already: what threw is its fail() (called from
      // afterAttempt) or came after it. It goes to the caller, not into a second fail().
      this.runOver([err]);
      return;
    }
    try {
      this.finishFailed(new ProxyError('internal_error', 'internal error', { cause: err }));
    } catch (escaped) {
      // The listener's fail() threw: the caller is told (runEnded, or run()'s rejection).
      this.runOver([escaped]);
      return;
    }
    this.runOver([]);
  }

  /** The run is over: the timers go, the caller is told. Once. Never throws. */
  private runOver(bugs: unknown[]): void {
    const resolve = this.runResolve;
    const reject = this.runReject!;
    if (resolve === undefined) return;
    this.runResolve = undefined;
    this.runReject = undefined;
    this.total.stop();
    this.clearIdle();
    this.clearHead();
    const end = this.runEnd;
    const tag = this.runTag;
    this.runEnd = undefined;
    this.runTag = undefined;
    if (end === undefined) {
      if (bugs.length === 0) resolve();
      else reject(bugs[0]);
      return;
    }
    try {
      end.runEnded(this, tag, bugs);
    } catch (err) {
      reject(err);
      return;
    }
    resolve();
  }

  /**
   * What comes after an attempt: NEXT_STOP (the stream is over, the listener told), NEXT_NOW
   * (the next attempt at once), or the ms to wait before it. Throws what the listener's end()
   * threw.
   */
  private afterAttempt(result: AttemptResult): number {
    if (result.ok) {
      // The listener was told already, when the attempt settled (complete()).
      if (this.endError !== undefined) throw this.endError;
      return NEXT_STOP;
    }
    if (this.stopped) return NEXT_STOP;
    const { failure, error } = result;
    if (!this.sentToken) {
      // Before the first token nothing reached the client: a retry is invisible.
      if (isRetryable(failure) && this.stats.retries < this.s.retryMax) {
        if (!this.opened) {
          this.listener.discard?.();
          this.dirty = false;
          this.forwardedPreToken = false;
          // The hold is for one accepted request waiting for its first token (a queue), not
          // for retries: it starts again at the next attempt's 200.
          this.clearHead();
        }
        const delay = backoffDelay(this.stats.retries, this.backoff(), result.headers);
        this.stats.retries++;
        return delay;
      }
      this.finishFailed(isRetryable(failure) ? this.exhausted(error, result.headers) : error);
      return NEXT_STOP;
    }
    if (this.canResume(failure)) {
      // A continuation the upstream refused (429, 5xx) waits as a retry would, Retry-After
      // honoured; after a broken connection the answer continues at once.
      this.resuming = true;
      return failure.kind === 'http'
        ? backoffDelay(this.stats.resumes, this.backoff(), result.headers)
        : NEXT_NOW;
    }
    this.finishFailed(error);
    return NEXT_STOP;
  }

  /** The client left (or the stream was handed off): stop everything, tell nobody. */
  abort(outcome: 'client_aborted' | 'handed_off' = 'client_aborted'): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stats.outcome = outcome;
    this.teardown();
  }

  /** End the stream now with an error the client is told about (shutdown, total time). */
  stop(err: ProxyError): void {
    // An answer that completed was told its end: no failure after it.
    if (this.stopped || this.stats.outcome !== 'running') return;
    this.stopped = true;
    this.teardown();
    this.finishFailed(err);
  }

  /** Backpressure: the client's socket is full; stop reading upstream. */
  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.upstreamBody?.pause();
  }

  /** The client drained: read upstream again. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.reading !== undefined) this.idle.start();
    this.upstreamBody?.resume();
  }

  get isOpened(): boolean {
    return this.opened;
  }

  // ---- one upstream attempt -------------------------------------------------------------

  /**
   * Begin an upstream attempt. Its result goes to attempted(): from the request's failure or the
   * response's head (responded), or, once the body is being read, from settle().
   */
  private attempt(): void {
    const resuming = this.answerParts.length > 0;
    // The client has the answer's first chunks (its role chunk) already: a continuation's or a
    // retry's chunks are held until they carry something, so that they are not sent twice.
    this.holdChunks = this.forwardChunks && (this.sentToken || this.forwardedPreToken);
    this.held = undefined;
    const path = resuming ? PREFIX_CHAT_PATH : CHAT_PATH;
    const body = resuming
      ? prefixContinuationBody(this.body, this.answerParts.join(''), this.outputTokens())
      : (this.json ?? this.body);
    // Not kept for the stream's life: it is the prompt again (a 100 KB conversation, 100 KB more
    // per open stream). Retries before the first token are rare, and cost a JSON.stringify.
    this.json = undefined;
    this.splicedOutput = resuming ? this.outputTokens() : 0;
    this.splicedAnswer = resuming ? this.answerTokens : 0;
    const controller = new UpstreamAbort();
    this.controller = controller;
    this.stats.upstreamRequests++;
    const headersTimer = setTimeout(() => controller.abort(ABORT_HEADERS), this.s.headersTimeoutMs);
    headersTimer.unref();
    let posted: Promise<UpstreamResponse>;
    try {
      posted = this.client.post(path, body, controller);
    } catch (err) {
      // As a rejection would: never inside run() itself (its caller is told after run() returns).
      queueMicrotask(() => this.postFailed(err, controller, headersTimer));
      return;
    }
    // Two closures for the wait for the response's head only.
    posted.then(
      (res) => this.responded(res, controller, headersTimer),
      (err: unknown) => this.postFailed(err, controller, headersTimer),
    );
  }

  /** The upstream request failed before its response's head. Never throws. */
  private postFailed(err: unknown, controller: UpstreamAbort, headersTimer: NodeJS.Timeout): void {
    clearTimeout(headersTimer);
    let result: AttemptResult;
    try {
      result = this.requestFailure(err, controller);
    } catch (bug) {
      this.bug(bug);
      return;
    }
    this.attempted(result);
  }

  /** The upstream's response head came. Never throws. */
  private responded(
    res: UpstreamResponse,
    controller: UpstreamAbort,
    headersTimer: NodeJS.Timeout,
  ): void {
    clearTimeout(headersTimer);
    try {
      if (this.stopped) {
        res.body.destroy();
        this.attempted({ ok: false, failure: { kind: 'reset' }, error: this.aborted() });
        return;
      }
      if (res.status !== 200) {
        this.httpFailure(res).then(
          (result) => this.attempted(result),
          (err: unknown) => this.bug(err),
        );
        return;
      }
      const type = String(res.headers['content-type'] ?? '');
      if (type.includes('html')) {
        res.body.destroy();
        this.attempted(
          this.protocolFailure('the upstream answered HTML instead of an event stream'),
        );
        return;
      }
      // The response begins with the first token; failures until then are JSON errors and
      // retries invisible. A long wait (a queue) begins it anyway, from the first 200 on.
      if (!this.opened && this.headTimer === undefined) {
        this.headTimer = setTimeout(headHoldTimeout, this.s.headHoldMs, this);
        this.headTimer.unref();
      }
      this.consume(res.body, controller);
    } catch (err) {
      this.bug(err);
    }
  }

  /** Read the body; the attempt's result comes from settle(). */
  private consume(body: Readable, controller: UpstreamAbort): void {
    // Tokens are read straight from the bytes (interpretBytes), unless the format forwards
    // chunks and can only take them as text.
    const bytePath = !this.forwardChunks || this.listener.chunkBytes !== undefined;
    const r = new Reading(this, body, controller, bytePath, this.s.maxEventBytes);
    this.reading = r;
    this.upstreamBody = body;
    this.idle.start();
    (body as ReadBody)[READING] = r;
    body.on('data', bodyData);
    body.on('end', bodyEnd);
    body.on('error', bodyError);
    body.on('close', bodyClose);
    if (this.paused) body.pause();
  }

  /** Hot path: one chunk of the upstream body being read by `r`. */
  read(r: Reading, buf: Buffer): void {
    // DeepSeek sends one chunk per event, and one socket read can bring many. Keep-alive
    // comments count as liveness. The idle deadline is restarted once per event-loop turn, from
    // the turn's first read: later reads of the same turn would move it by a few ms at most (a
    // list move and a clock call per token, for nothing); the end-of-turn callback is scheduled
    // here and clears the flag.
    if (!this.turnSeen) {
      this.turnSeen = true;
      this.idle.start();
      awaitEndOfTurn(this);
    }
    this.stats.bytesIn += buf.length;
    try {
      r.decoder.feed(buf);
    } catch (err) {
      // Thrown by a listener from inside a socket event: it ends this stream only, with the
      // listener's ProxyError (a chunk it could not use) or as a bug.
      r.scan.clear();
      if (this.reading === r) {
        this.settle(
          err instanceof ProxyError
            ? { ok: false, failure: { kind: 'protocol' }, error: err }
            : internalFailure(err),
        );
      }
      return;
    }
    r.scan.clear(); // its searches remember positions in this buffer only
    // One client write per event-loop turn, not per upstream chunk: DeepSeek sends a chunk
    // per event, and a write per chunk made writev the top item of the profile.
    // Past 64 KiB read since the last write, write now: the buffer stays small for
    // backpressure to act on.
    this.unflushed += buf.length;
    // The first token goes out at the end of its chunk: it is what time to first token
    // measures. Anything else waits for the end of the turn (scheduled above).
    if (this.dirty && (this.firstPending || this.unflushed >= FLUSH_NOW_BYTES)) {
      this.flushNow();
    }
  }

  /** The body being read by `r` ended, or broke (`broke`). */
  readEnded(r: Reading, broke: boolean): void {
    if (this.reading !== r) return;
    if (!broke) r.decoder.end();
    // After finish_reason the answer is whole: a connection that breaks (or goes quiet)
    // before `[DONE]` ends it normally, never through a retry or a continuation.
    if (this.finishReason !== undefined) this.settle({ ok: true });
    else if (broke)
      this.settle(this.resetFailure('the upstream connection broke during the answer'));
    else
      this.settle(this.resetFailure('the upstream closed the stream before the answer finished'));
  }

  /**
   * End the attempt being read, once: its body's listeners go, and attempted() has its result in
   * a microtask (settle is called from socket events, timers, and abort() or stop(): the next
   * attempt, or the caller's runEnded, does not run inside them).
   */
  private settle(result: AttemptResult): void {
    const r = this.reading;
    if (r === undefined) return;
    this.reading = undefined;
    this.clearIdle();
    const body = r.body;
    body.off('data', bodyData);
    body.off('end', bodyEnd);
    body.off('error', bodyError);
    body.off('close', bodyClose);
    body.on('error', noop);
    (body as ReadBody)[READING] = undefined;
    this.upstreamBody = undefined;
    if (result.ok && this.finishReason !== undefined && !body.readableEnded) {
      body.resume(); // drain what is left (usage, [DONE]) so the socket goes back to the pool
    } else if (!body.readableEnded) {
      r.controller.abort(ABORT_STOP);
      body.destroy();
    }
    if (result.ok) this.complete();
    queueMicrotask(() => this.attempted(result));
  }

  onIdle(): void {
    if (this.paused) {
      // Our reader is slow, not the upstream: no bytes can arrive while we hold the socket.
      this.idle.start();
      return;
    }
    if (this.finishReason !== undefined) {
      // The answer is whole and only `[DONE]` is missing: let go of the socket (its close ends
      // the attempt as a success), do not wait on it.
      this.upstreamBody?.destroy();
      return;
    }
    this.settle({
      ok: false,
      failure: { kind: 'idle_timeout' },
      error: this.timeoutError('upstream_idle_timeout', 'idle', this.s.idleTimeoutMs),
    });
  }

  private clearIdle(): void {
    this.idle.stop();
  }

  // ---- DeltaSink: called by the interpreter, per event ---------------------------------

  chunk(data: string): void {
    if (!this.forwardChunks) return;
    // A continuation's usage counts only itself: the chunk passed through says the whole answer's.
    if (this.splicedOutput > 0 && data.includes('"usage"')) data = this.spliceUsageIn(data);
    if (this.holdChunks) {
      this.held = data;
      return;
    }
    if (!this.sentToken) this.forwardedPreToken = true;
    this.listener.chunk!(data);
    this.dirty = true;
  }

  chunkBytes(buf: Buffer, start: number, end: number): void {
    if (!this.forwardChunks) return;
    if (this.holdChunks) {
      this.held = buf.toString('utf8', start, end);
      return;
    }
    if (!this.sentToken) this.forwardedPreToken = true;
    this.listener.chunkBytes!(buf, start, end);
    this.dirty = true;
  }

  /**
   * The chunk just held carried something (a token, a finish, usage): forward it, and the rest
   * of this attempt's chunks as they come. A held chunk that carried nothing (the role chunk a
   * continuation or a retry starts with) is replaced by the next one, never forwarded.
   */
  private releaseHeld(): void {
    this.holdChunks = false;
    const held = this.held;
    this.held = undefined;
    if (held === undefined) return;
    this.listener.chunk!(held);
    this.dirty = true;
  }

  content(text: string, src?: TokenSource): void {
    if (this.holdChunks) this.releaseHeld();
    if (!this.sentToken) this.firstToken();
    this.stats.tokens++;
    this.answerTokens++;
    if (this.s.upstreamResumeMax > 0) {
      this.answerParts.push(text);
      if (++this.partsSinceCompact === COMPACT_PARTS) this.compactParts();
    }
    if (!this.forwardChunks) {
      if (this.splitPair !== '' || isHighSurrogate(text.charCodeAt(text.length - 1))) {
        this.joinPair(text, false);
        return;
      }
      this.listener.content(text, src);
      this.dirty = true;
    }
  }

  reasoning(text: string, src?: TokenSource): void {
    if (this.holdChunks) this.releaseHeld();
    if (!this.sentToken) this.firstToken();
    this.stats.tokens++;
    if (!this.forwardChunks) {
      if (this.splitPair !== '' || isHighSurrogate(text.charCodeAt(text.length - 1))) {
        this.joinPair(text, true);
        return;
      }
      this.listener.reasoning(text, src);
      this.dirty = true;
    }
  }

  /**
   * A token that ends in the first half of a surrogate pair (an upstream that escaped an emoji as
   * `\ud83d` in one event and `\ude00` in the next): that half waits for the next token of the
   * same kind, so every token the listener gets is whole characters. Sent alone, each half
   * would become U+FFFD in text mode, and in the journal's byte counts for a text resume.
   */
  private joinPair(text: string, reasoning: boolean): void {
    let t = text;
    if (this.splitPair !== '') {
      if (this.splitPairReasoning === reasoning) t = this.splitPair + t;
      else this.releasePair(); // the other kind: its half has no other half coming
      this.splitPair = '';
    }
    if (isHighSurrogate(t.charCodeAt(t.length - 1))) {
      this.splitPair = t.slice(-1);
      this.splitPairReasoning = reasoning;
      t = t.slice(0, -1);
    }
    if (t.length === 0) return;
    if (reasoning) this.listener.reasoning(t);
    else this.listener.content(t);
    this.dirty = true;
  }

  /** A lone first half still waiting: out as it is (the answer ends, or changes kind). */
  private releasePair(): void {
    const half = this.splitPair;
    if (half === '') return;
    this.splitPair = '';
    if (this.splitPairReasoning) this.listener.reasoning(half);
    else this.listener.content(half);
    this.dirty = true;
  }

  toolCall(): void {
    this.toolCalled = true;
    if (this.holdChunks) this.releaseHeld();
    // Forwarded as chunks; once one went out, a retry would repeat it: the answer has begun.
    if (!this.sentToken) this.firstToken();
  }

  finish(reason: string, usage: Usage | undefined): void {
    if (this.holdChunks && reason !== CUT_OFF_FINISH) this.releaseHeld();
    if (usage) this.usageSeen = this.spliceUsage(usage);
    if (NORMAL_FINISH.has(reason)) {
      this.finishReason = reason;
      return;
    }
    if (reason === CUT_OFF_FINISH) {
      this.settle({
        ok: false,
        failure: { kind: 'cut_off' },
        error: new ProxyError('upstream_cut_off', 'the upstream cut the answer off'),
      });
      return;
    }
    this.finishReason = reason; // an unknown reason still ends the answer
  }

  usage(usage: Usage): void {
    if (this.holdChunks) this.releaseHeld();
    this.usageSeen = this.spliceUsage(usage);
  }

  done(): void {
    if (this.finishReason === undefined) this.finishReason = 'stop';
    this.settle({ ok: true });
  }

  invalid(message: string): void {
    this.settle(this.protocolFailure(message));
  }

  upstreamError(message: string): void {
    // After the finish chunk the answer is whole (as for a connection that breaks then): an error
    // the upstream reports afterwards must not continue it.
    if (this.finishReason !== undefined) {
      this.done();
      return;
    }
    this.settle({
      ok: false,
      failure: { kind: 'reset' },
      error: new ProxyError('upstream_error', sanitize(message)),
    });
  }

  // ---- helpers, out of the hot path ---------------------------------------------------

  /**
   * Tokens generated, reasoning included (DeepSeek's max_tokens counts the chain of thought):
   * what a continuation's max_tokens is taken from.
   */
  private outputTokens(): number {
    return this.tokensBefore + this.stats.tokens;
  }

  /**
   * The last COMPACT_PARTS tokens as one string. A token read on the text path is a slice of its
   * chunk's text, and V8 keeps the whole chunk (about 200 bytes) alive for a slice of 13
   * characters or more: a long answer held every chunk it came in. Joined, the tokens are a copy
   * that holds only itself; each token is copied once.
   */
  private compactParts(): void {
    const parts = this.answerParts;
    const tail = parts.splice(parts.length - COMPACT_PARTS, COMPACT_PARTS);
    parts.push(tail.join(''));
    this.partsSinceCompact = 0;
  }

  /**
   * A continuation's usage describes that request only: its prompt holds the answer so far, its
   * completion only what came after. For the client, the answer's usage is the first request's
   * prompt and every token generated: completion += the tokens before the splice (reasoning
   * included), prompt -= the answer tokens it was given back. Counted as DeepSeek streams them,
   * one token per chunk. Changes `usage` (the interpreter's own parse) and returns it.
   */
  private spliceUsage(usage: Usage): Usage {
    const before = this.splicedOutput;
    if (before === 0) return usage;
    const completion = usage.completion_tokens;
    const prompt = usage.prompt_tokens;
    if (typeof completion === 'number') usage.completion_tokens = completion + before;
    if (typeof prompt === 'number') {
      const given = Math.min(prompt, this.splicedAnswer);
      usage.prompt_tokens = prompt - given;
      // DeepSeek splits the prompt into cache hits and misses (they add up to it): the prefix
      // given back comes off the misses first (it is new text to the cache), then the hits.
      const miss = usage.prompt_cache_miss_tokens;
      const hit = usage.prompt_cache_hit_tokens;
      if (typeof miss === 'number') {
        const fromMiss = Math.min(miss, given);
        usage.prompt_cache_miss_tokens = miss - fromMiss;
        if (typeof hit === 'number')
          usage.prompt_cache_hit_tokens = Math.max(0, hit - (given - fromMiss));
      }
    }
    if (typeof usage.prompt_tokens === 'number' && typeof usage.completion_tokens === 'number') {
      usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    }
    const details = usage.completion_tokens_details as { reasoning_tokens?: unknown } | undefined;
    if (details && typeof details.reasoning_tokens === 'number') {
      details.reasoning_tokens += before - this.splicedAnswer;
    }
    return usage;
  }

  /** spliceUsage for a chunk passed through as JSON text (slow path: usage chunks only). */
  private spliceUsageIn(data: string): string {
    try {
      const chunk = JSON.parse(data) as { usage?: unknown };
      if (chunk.usage === null || typeof chunk.usage !== 'object') return data;
      this.spliceUsage(chunk.usage as Usage);
      return JSON.stringify(chunk);
    } catch {
      return data; // not this code's to judge: the interpreter reports it
    }
  }

  private firstToken(): void {
    if (!this.opened) this.begin();
    this.sentToken = true;
    this.firstPending = true;
    this.stats.ttftMs = Date.now() - this.stats.startedAt;
  }

  /** The response begins: the listener opens (its head goes with the next flush). */
  private begin(): void {
    this.opened = true;
    this.clearHead();
    this.listener.open();
  }

  /** No token within headHoldMs of the upstream's 200: the head goes out alone. */
  onHeadHold(): void {
    this.headTimer = undefined;
    if (this.stopped || this.opened) return;
    this.begin();
    this.dirty = false;
    if (!this.listener.flush()) this.pause();
  }

  /** The stream's total time limit (streamMaxDurationMs) is up. */
  onTotalTimeout(): void {
    this.stop(this.timeoutError('stream_duration_exceeded', 'total', this.s.streamMaxDurationMs));
  }

  private clearHead(): void {
    if (this.headTimer === undefined) return;
    clearTimeout(this.headTimer);
    this.headTimer = undefined;
  }

  private canResume(f: Failure): boolean {
    // Only an answer can be continued; a break during reasoning has nothing to prefix, and a
    // tool call cannot be continued by prefix completion (the continuation's own call would
    // merge, by index, into the half-sent one).
    if (
      this.answerParts.length === 0 ||
      this.toolCalled ||
      this.stats.resumes >= this.s.upstreamResumeMax
    )
      return false;
    // The client's max_tokens is spent: there is nothing left to ask for.
    const left = remainingMaxTokens(this.body, this.outputTokens());
    if (left !== undefined && left < 1) return false;
    return isRetryable(f);
  }

  /**
   * The answer finished: tell the listener now, inside the upstream read that brought the end,
   * not a few promise turns later. Tokens still pending go out with the end in one write, and
   * the end is not held behind the loop's awaits.
   */
  private complete(): void {
    if (!this.opened) this.begin(); // an answer without a token
    this.stats.outcome = 'completed';
    this.stats.finishReason = this.finishReason ?? 'stop';
    try {
      this.releasePair();
      this.listener.end(this.stats.finishReason, this.usageSeen);
    } catch (err) {
      // Thrown from inside a socket event: report it from the loop, as any other bug.
      this.endError = err;
    }
  }

  private finishFailed(err: ProxyError): void {
    if (this.stats.outcome === 'failed') return;
    this.stats.outcome = 'failed';
    this.stats.errorCode = err.code;
    // A bug: the log line says what it was (the client gets a bland internal_error).
    if (err.code === 'internal_error') this.stats.cause = err.cause;
    if (this.opened) this.releasePair();
    const message = this.s.redact ? this.s.redact(err.message) : err.message;
    this.listener.fail(message === err.message ? err : withMessage(err, message), this.opened);
  }

  private teardown(): void {
    this.controller?.abort(ABORT_STOP);
    this.upstreamBody?.destroy();
    this.settle({ ok: false, failure: { kind: 'reset' }, error: this.aborted() });
    // A wait before the next attempt ends now: the loop sees the stop, a microtask later.
    if (this.sleepTimer !== undefined) queueMicrotask(() => this.wakeUp());
  }

  private backoff() {
    return {
      baseMs: this.s.retryBaseDelayMs,
      maxMs: this.s.retryMaxDelayMs,
      retryAfterMaxMs: this.s.retryAfterMaxMs,
    };
  }

  private aborted(): ProxyError {
    return new ProxyError('internal_error', 'stream stopped');
  }

  private timeoutError(code: ErrorCode, limit: string, ms: number): ProxyError {
    const what =
      limit === 'total' ? 'end of stream' : limit === 'connect' ? 'connection' : 'progress';
    const message = `no ${what} from the upstream within ${ms} ms (${limit} time limit)`;
    // Before the response began, the SPEC's single 504 code; in-band, the limit's own code.
    return this.opened
      ? new ProxyError(code, message, { details: { limit } })
      : new ProxyError('upstream_timeout', message, { details: { limit } });
  }

  private exhausted(last: ProxyError, headers?: Record<string, unknown>): ProxyError {
    if (last.status === 504) return last;
    const ra = headers ? Number(headers['retry-after']) : NaN;
    return new ProxyError(
      'upstream_unavailable',
      `the upstream is unavailable after ${this.stats.retries} retries: ${last.message}`,
      { retryAfterS: Number.isFinite(ra) && ra > 0 ? Math.ceil(ra) : 1 },
    );
  }

  private resetFailure(message: string): AttemptResult {
    return {
      ok: false,
      failure: { kind: 'reset' },
      error: new ProxyError('upstream_reset', message),
    };
  }

  private protocolFailure(message: string): AttemptResult {
    return {
      ok: false,
      failure: { kind: 'protocol' },
      error: new ProxyError('upstream_protocol_error', message),
    };
  }

  private requestFailure(err: unknown, call: UpstreamAbort): AttemptResult {
    if (call.reason === ABORT_HEADERS) {
      return {
        ok: false,
        failure: { kind: 'headers_timeout' },
        error: this.timeoutError('upstream_headers_timeout', 'headers', this.s.headersTimeoutMs),
      };
    }
    const code = errorCodeOf(err);
    if (code === 'UPSTREAM_CONNECT_TIMEOUT') {
      return {
        ok: false,
        failure: { kind: 'connect' },
        error: this.timeoutError('upstream_connect_timeout', 'connect', this.s.connectTimeoutMs),
      };
    }
    if (CONNECT_CODES.has(code)) {
      return {
        ok: false,
        failure: { kind: 'connect' },
        error: new ProxyError('upstream_unavailable', `cannot connect to the upstream (${code})`),
      };
    }
    // Not a network failure: a bug. End this stream only; retrying would repeat it.
    if (code === '' && !isAxiosError(err)) return internalFailure(err);
    return this.resetFailure(`the upstream connection failed (${code || 'unknown'})`);
  }

  private async httpFailure(res: UpstreamResponse): Promise<AttemptResult> {
    const text = await readSome(res.body, MAX_ERROR_BODY, this.s.idleTimeoutMs);
    const status = res.status;
    const upstreamMessage = extractMessage(text, String(res.headers['content-type'] ?? ''));
    let error: ProxyError;
    switch (status) {
      case 400:
      case 422:
        error = new ProxyError(
          'invalid_request',
          upstreamMessage
            ? `the upstream refused the request: ${upstreamMessage}`
            : 'the upstream refused the request',
          { upstreamStatus: status },
        );
        break;
      case 401:
      case 403:
        error = new ProxyError(
          'upstream_auth_failed',
          "the upstream rejected the server's API key",
          {
            upstreamStatus: status,
          },
        );
        break;
      case 402:
        error = new ProxyError(
          'upstream_insufficient_balance',
          'the upstream account has insufficient balance',
          { upstreamStatus: status },
        );
        break;
      case 408:
      case 504:
        error = new ProxyError('upstream_timeout', `the upstream timed out (HTTP ${status})`, {
          upstreamStatus: status,
        });
        break;
      default:
        error = new ProxyError('upstream_error', `the upstream answered HTTP ${status}`, {
          upstreamStatus: status,
        });
    }
    return { ok: false, failure: { kind: 'http', status }, error, headers: res.headers };
  }
}

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
]);

function noop(): void {}

// The engine's time limits that live for the stream's length (idle and total in shared lists, see
// deadlines.ts; the head hold a timer of its own) call these with the stream, not a closure
// each (56 B and a context per stream, kept for its length). The headers timer, cleared at the
// response's headers, keeps its closure.
/** The lists of the idle and total limits, by length. */
const IDLE_LISTS = new Map<number, Deadlines<ChatStream>>();
const TOTAL_LISTS = new Map<number, Deadlines<ChatStream>>();

function idleTimeout(stream: ChatStream): void {
  stream.onIdle();
}

function totalTimeout(stream: ChatStream): void {
  stream.onTotalTimeout();
}

function headHoldTimeout(stream: ChatStream): void {
  stream.onHeadHold();
}

function wakeUp(stream: ChatStream): void {
  stream.wakeUp();
}

/**
 * One attempt's upstream body being read: the decoder and its handlers. An object with methods
 * for each open stream, where closures over the attempt's scope kept that scope and a closure per
 * handler; the body's listeners (bodyData and the others, below) find it on the body.
 */
class Reading implements SseDecoderHandlers {
  readonly scan = new ByteScan();
  readonly decoder: Decoder;

  constructor(
    readonly engine: ChatStream,
    readonly body: Readable,
    readonly controller: UpstreamAbort,
    bytePath: boolean,
    maxEventBytes: number,
  ) {
    this.decoder = new Decoder(this, maxEventBytes, bytePath);
  }

  onEvent(data: string): void {
    if (this.engine.reading === this) interpret(data, this.engine, this.scan);
  }

  onOverflow(n: number): void {
    this.engine.invalid(`upstream event larger than ${n} characters`);
  }

  onDataBytes(buf: Buffer, start: number, end: number): void {
    if (this.engine.reading === this) interpretBytes(buf, start, end, this.scan, this.engine);
  }
}

/**
 * The body's listeners: four functions shared by every stream, called with the body as `this`;
 * the body carries its Reading (set while it is read). Four closures per stream before, kept for
 * its length.
 */
const READING = Symbol('reading');
type ReadBody = Readable & { [READING]?: Reading };

function bodyData(this: ReadBody, buf: Buffer): void {
  const r = this[READING]!;
  r.engine.read(r, buf);
}

function bodyEnd(this: ReadBody): void {
  const r = this[READING]!;
  r.engine.readEnded(r, false);
}

function bodyError(this: ReadBody): void {
  const r = this[READING]!;
  r.engine.readEnded(r, true);
}

function bodyClose(this: ReadBody): void {
  const r = this[READING]!;
  if (!this.readableEnded) r.engine.readEnded(r, true);
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}

/** A bug of ours (or a listener's): ends this stream only; a retry would repeat it. */
function internalFailure(err: unknown): AttemptResult {
  return {
    ok: false,
    failure: { kind: 'internal' },
    error: new ProxyError('internal_error', 'internal error', { cause: err }),
  };
}

function errorCodeOf(err: unknown): string {
  let e: unknown = err;
  for (let depth = 0; e && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code !== 'ERR_BAD_RESPONSE' && code !== 'ERR_CANCELED') {
      if (code !== 'ECONNABORTED') return code;
    }
    e = (e as { cause?: unknown }).cause;
  }
  return '';
}

/** Read at most `max` bytes of an error body, giving up after `ms`. Never throws. */
function readSome(body: Readable, max: number, ms: number): Promise<string> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let size = 0;
    const done = () => {
      clearTimeout(timer);
      body.off('data', onData);
      body.off('end', done);
      body.off('error', done);
      body.on('error', noop);
      body.destroy();
      resolve(Buffer.concat(parts).toString('utf8'));
    };
    const onData = (b: Buffer) => {
      parts.push(b);
      size += b.length;
      if (size >= max) done();
    };
    const timer = setTimeout(done, ms);
    timer.unref();
    body.on('data', onData);
    body.on('end', done);
    body.on('error', done);
  });
}

/** The upstream's own error message, if it sent JSON; never raw HTML or garbage. */
function extractMessage(text: string, contentType: string): string | undefined {
  if (!contentType.includes('json') && !text.trimStart().startsWith('{')) return undefined;
  try {
    const parsed = JSON.parse(text) as {
      error?: { message?: unknown } | string;
      message?: unknown;
    };
    const m =
      typeof parsed.error === 'object' && parsed.error !== null
        ? parsed.error.message
        : (parsed.error ?? parsed.message);
    return typeof m === 'string' ? sanitize(m) : undefined;
  } catch {
    return undefined;
  }
}

/** A message from the upstream, safe to pass on: printable, short, no markup, no key. */
export function sanitize(message: string): string {
  const clean = message
    .replace(/<[^>]*>/g, ' ')
    .replace(/sk-[A-Za-z0-9_-]{6,}/g, 'sk-***')
    // eslint-disable-next-line no-control-regex -- stripping control characters is the point
    .replace(/[\u0000-\u001f\u007f]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return clean.length > 300 ? clean.slice(0, 300) + '...' : clean;
}
