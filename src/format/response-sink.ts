// format/response-sink.ts: writes one stream's events to one HTTP response, in any Frames
// format, live or replayed from the journal. Owns the response headers, one socket write per
// upstream read, heartbeats, and what a failure looks like: JSON before the first byte, in-band
// (or an aborted body, for text) after.

import type { ServerResponse } from 'node:http';
import { releaseHead } from '../flat';
import { errorBody, type ProxyError } from '../errors';
import type { JournalEvent } from '../journal/types';
import type { TokenSource } from '../stream/interpreter';
import type { Frames } from './frames';
import { writeChunk } from './chunk';

export interface ResponseSinkOptions {
  requestId: string;
  heartbeatMs: number;
  /** Status for the head: 200, or 206 for a ranged text resume. */
  status?: number;
  /** Text resume: skip this many UTF-8 bytes of the body first. */
  skipBytes?: number;
  /** Text mode counts reasoning as body bytes (include_reasoning). */
  textIncludesReasoning?: boolean;
  /** A follow of the journal: the seq it resumes after. */
  afterSeq?: number;
}

/**
 * The heartbeat timer's period: half of HEARTBEAT_MS. A tick pings when nothing was written
 * since the one before, so the silence before a ping is between a half and a whole
 * HEARTBEAT_MS; a timer of HEARTBEAT_MS itself let it run to almost twice that (a reverse
 * proxy timing out just above HEARTBEAT_MS, as the README advises, would cut the stream).
 */
export function heartbeatTickMs(heartbeatMs: number): number {
  return Math.max(1, Math.floor(heartbeatMs / 2));
}

/** What a heartbeat ticker ticks: a stream's heartbeat. */
interface Ticking {
  tick(): void;
}

/**
 * One interval per heartbeat period for all the streams' heartbeats, not one per stream: a
 * Timeout per stream (about 150 B with its numbers) was kept for each open stream's length.
 * The interval runs while any stream is on it. A stream joins between two ticks, so its first
 * tick may come at once: each heartbeat takes a whole period from its first tick before it acts
 * (the silence before a ping is still between one and two periods, at most HEARTBEAT_MS).
 */
class Ticker {
  private readonly members = new Set<Ticking>();
  private timer: NodeJS.Timeout | undefined = undefined;

  constructor(private readonly periodMs: number) {}

  add(m: Ticking): void {
    this.members.add(m);
    if (this.timer === undefined) {
      this.timer = setInterval(tickAll, this.periodMs, this);
      this.timer.unref();
    }
  }

  delete(m: Ticking): void {
    if (!this.members.delete(m) || this.members.size > 0 || this.timer === undefined) return;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Every member ticks (one may leave, or another join, meanwhile); a throw ends no other's. */
  tickAll(): void {
    let threw = false;
    let first: unknown;
    for (const m of this.members) {
      try {
        m.tick();
      } catch (err) {
        if (!threw) first = err;
        threw = true;
      }
    }
    if (threw) throw first;
  }
}

function tickAll(t: Ticker): void {
  t.tickAll();
}

/** By period (one HEARTBEAT_MS per app; tests use several). */
const tickers = new Map<number, Ticker>();

function tickerFor(heartbeatMs: number): Ticker {
  const period = heartbeatTickMs(heartbeatMs);
  let t = tickers.get(period);
  if (t === undefined) tickers.set(period, (t = new Ticker(period)));
  return t;
}

/**
 * Keeps a quiet response alive for the formats written outside ResponseSink (batch, `/v1`): at
 * each tick, `owner.ping()` unless something was written since the tick before. A ping counts as
 * a write, so a long silence gets one per HEARTBEAT_MS. Stops by itself once the response is gone.
 */
export class Heartbeat {
  // True at first: the first tick (which may come at once, see Ticker) only clears it.
  private active = true;
  private readonly ticker: Ticker;

  constructor(
    private readonly res: ServerResponse,
    heartbeatMs: number,
    private readonly owner: { ping(): void },
  ) {
    this.ticker = tickerFor(heartbeatMs);
    this.ticker.add(this);
  }

  tick(): void {
    if (this.res.destroyed || this.res.writableEnded) this.stop();
    else if (this.active) this.active = false;
    else {
      this.owner.ping();
      this.active = true;
    }
  }

  /** Something was written: no ping at the next tick. */
  wrote(): void {
    this.active = true;
  }

  stop(): void {
    this.ticker.delete(this);
  }
}

export class ResponseSink {
  bytesOut = 0;
  /** HTTP status sent, for the log line. */
  status = 0;
  /** Most bytes seen waiting in the response's buffer: what a slow reader costs us. */
  peakBuffered = 0;
  /** Frames not yet written, as one byte string (frames.ts). */
  private pending = '';
  /** open(true) wrote the head into Node's buffer only: the next flush sends it. */
  private headPending = false;
  private wroteSinceTick = false;
  private heartbeat: Ticker | undefined;
  /** The heartbeat's first tick is still to come (see Ticker): it does nothing. */
  private firstTick = true;
  private closed = false;
  private skip: number;
  /** The last journal event written (replays and follows): the seq after it ends a stream. */
  private lastSeq: number;
  /** event() wrote at least one journal event. */
  private wroteEvent = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly frames: Frames,
    private readonly opts: ResponseSinkOptions,
  ) {
    this.skip = opts.skipBytes ?? 0;
    this.lastSeq = opts.afterSeq ?? 0;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The head (with X-Request-Id, and the SSE preamble's id) went out to the client. */
  get headSent(): boolean {
    return this.status !== 0 && !this.headPending && this.res.headersSent;
  }

  /**
   * Send the head (and the SSE preamble). With `deferHead`, they wait for the next flush(), which
   * the caller promises with the first tokens or after a short hold: head and first tokens then
   * go out in one socket write.
   */
  open(deferHead = false): void {
    const res = this.res;
    if (res.headersSent || res.destroyed) return;
    this.status = this.opts.status ?? 200;
    const headers: Record<string, string> = {
      'Content-Type': this.frames.contentType,
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
      'X-Request-Id': this.opts.requestId,
      // No `Connection` header: Node sends keep-alive itself, or close when the client asked.
    };
    // The length of a live answer is unknown; clients (curl -C -) check the start offset.
    if (this.status === 206) headers['Content-Range'] = `bytes ${this.opts.skipBytes ?? 0}-*/*`;
    res.writeHead(this.status, headers);
    if (deferHead) {
      this.headPending = true;
      this.pending = this.frames.preamble + this.pending;
    } else {
      if (this.frames.preamble) res.write(this.frames.preamble);
      else res.flushHeaders();
      releaseHead(res);
    }
    if (this.frames.ping !== null) {
      this.heartbeat = tickerFor(this.opts.heartbeatMs);
      this.heartbeat.add(this);
    }
  }

  /** HEAD: the head a stream would have, and no body. */
  head(): void {
    this.open();
    this.close();
    this.res.end();
  }

  /** Hot path: one answer token (`src`: its upstream bytes, see TokenSource). */
  content(text: string, seq: number, src?: TokenSource): void {
    if (this.skip > 0) return this.skipText(text, seq, 'content');
    this.pending += this.frames.content(text, seq, src);
  }

  reasoning(text: string, seq: number, src?: TokenSource): void {
    if (this.skip > 0 && this.opts.textIncludesReasoning)
      return this.skipText(text, seq, 'reasoning');
    this.pending += this.frames.reasoning(text, seq, src);
  }

  /** Write what is pending as one write; false means the client is not keeping up. */
  flush(): boolean {
    const out = this.pending;
    if (this.closed) return true;
    if (out.length === 0) {
      if (this.headPending) {
        this.headPending = false;
        this.res.flushHeaders();
        releaseHead(this.res);
      }
      return true;
    }
    this.pending = '';
    this.wroteSinceTick = true;
    this.bytesOut += out.length;
    const ok = writeChunk(this.res, out, 'latin1');
    if (this.headPending) {
      this.headPending = false;
      releaseHead(this.res);
    }
    if (ok) return true;
    // Backpressure (rare path): note the high-water mark for the log line.
    if (this.res.writableLength > this.peakBuffered) this.peakBuffered = this.res.writableLength;
    return false;
  }

  /** The answer finished: what is pending, the done event and a clean end, in one write. */
  done(data: string, seq: number): void {
    if (this.closed) return;
    this.endWith(this.pending + this.frames.done(data, seq));
  }

  /** A failure after the stream began: in-band for SSE; for text, cut without the last chunk. */
  error(data: string, seq: number): void {
    const frame = this.frames.error(data, seq);
    if (frame === null) {
      this.flush();
      this.close();
      // A truncated text answer must never look complete.
      this.res.destroy();
      return;
    }
    if (this.closed) return;
    this.endWith(this.pending + frame);
  }

  private endWith(out: string): void {
    this.pending = '';
    this.headPending = false;
    this.close();
    if (out.length === 0) {
      this.res.end();
      return;
    }
    this.wroteSinceTick = true;
    this.bytesOut += out.length;
    this.res.end(out, 'latin1');
  }

  /** Any journal event (live follow or replay). */
  event(ev: JournalEvent): void {
    this.lastSeq = ev.seq;
    this.wroteEvent = true;
    switch (ev.kind) {
      case 'content':
        return this.content(ev.data, ev.seq);
      case 'reasoning':
        return this.reasoning(ev.data, ev.seq);
      case 'done':
        return this.done(ev.data, ev.seq);
      case 'error':
        return this.error(ev.data, ev.seq);
    }
  }

  /** A failure before anything was sent: the SPEC's JSON error with its status. */
  failBeforeOpen(err: ProxyError): void {
    const res = this.res;
    this.close();
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    this.status = err.status;
    const headers: Record<string, string> = {
      'Content-Type': 'application/json; charset=utf-8',
      'X-Request-Id': this.opts.requestId,
      'Cache-Control': 'no-store',
    };
    if (err.retryAfterS !== undefined) headers['Retry-After'] = String(err.retryAfterS);
    res.writeHead(err.status, headers);
    res.end(JSON.stringify(errorBody(err, this.opts.requestId)));
  }

  /**
   * End without a terminal event, so the client comes back for the rest: EventSource reconnects
   * by itself; a text client sees a cut body and resumes with Range.
   */
  cut(): void {
    if (this.closed) return;
    this.flush();
    this.close();
    if (this.frames.error('', 0) === null) this.res.destroy();
    else this.res.end();
  }

  /**
   * The journal ran out without the stream's end (evicted, or abandoned): cut the response.
   * `gone`: the stream itself is gone (its id forgotten: it failed before it began, and a retry
   * may start another under the same id).
   */
  abandon(gone = false): void {
    if (this.closed) return;
    this.error(
      JSON.stringify({ code: 'stream_expired', message: 'the stream is no longer available' }),
      // Not 0: EventSource would reconnect with it and be replayed everything again. After the
      // last seq, a reconnect is told 204 (the stream is over) and stops. But a stream that is
      // gone before this sink wrote any of its events keeps the id the client has: the next
      // seq may be the first event of another stream under the same id, which a reconnect
      // from it would skip.
      gone && !this.wroteEvent ? this.lastSeq : this.lastSeq + 1,
    );
  }

  // Text resume: drop the first `skip` bytes of body text; a split character goes out as bytes.
  private skipText(text: string, seq: number, kind: 'content' | 'reasoning'): void {
    const bytes = Buffer.byteLength(text);
    if (bytes <= this.skip) {
      this.skip -= bytes;
      return;
    }
    const tail = Buffer.from(text).subarray(this.skip);
    this.skip = 0;
    void seq;
    void kind;
    this.flush();
    this.bytesOut += tail.length;
    this.res.write(tail);
  }

  /** The heartbeat's. */
  tick(): void {
    if (this.res.destroyed || this.res.writableEnded) {
      // The client went away (or the response ended elsewhere): nothing to keep alive.
      this.close();
      return;
    }
    if (this.firstTick) {
      // Silence is counted from here: a ping at the next tick if nothing is written meanwhile.
      this.firstTick = false;
      this.wroteSinceTick = false;
      return;
    }
    if (this.headPending) {
      // Still held for the first token after a whole tick: the head and preamble go first.
      this.flush();
    } else if (!this.wroteSinceTick && this.frames.ping !== null && !this.closed) {
      this.res.write(this.frames.ping);
      // A ping counts as a write: in a long silence, one ping per HEARTBEAT_MS, not per tick.
      this.wroteSinceTick = true;
      return;
    }
    this.wroteSinceTick = false;
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    this.heartbeat?.delete(this);
  }
}
