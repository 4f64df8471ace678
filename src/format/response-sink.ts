// format/response-sink.ts: the StreamListener that writes one stream to one HTTP response, in any
// Frames format. Owns the response headers, one socket write per upstream read, heartbeats, and
// what a failure looks like: JSON before the first byte, in-band (or an aborted body) after.

import type { ServerResponse } from 'node:http';
import { errorBody, type ProxyError } from '../errors';
import type { StreamListener } from '../stream/chat-stream';
import type { Usage } from '../stream/interpreter';
import type { Frames } from './frames';

export interface ResponseSinkOptions {
  requestId: string;
  heartbeatMs: number;
  /** Called once when the stream has ended, whatever the reason. */
  onFinish?: () => void;
}

export class ResponseSink implements StreamListener {
  bytesOut = 0;
  /** HTTP status sent, for the log line. */
  status = 0;
  /** Most bytes seen waiting in the response's buffer: what a slow reader costs us. */
  peakBuffered = 0;
  private pending = '';
  private wroteSinceTick = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly frames: Frames,
    private readonly opts: ResponseSinkOptions,
  ) {}

  open(): void {
    const res = this.res;
    if (res.headersSent || res.destroyed) return;
    this.status = 200;
    res.writeHead(200, {
      'Content-Type': this.frames.contentType,
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
      'X-Request-Id': this.opts.requestId,
      Connection: 'keep-alive',
    });
    if (this.frames.preamble) res.write(this.frames.preamble);
    else res.flushHeaders();
    if (this.frames.ping !== null) {
      this.heartbeat = setInterval(() => this.tick(), this.opts.heartbeatMs);
      this.heartbeat.unref();
    }
  }

  content(text: string): void {
    this.pending += this.frames.content(text);
  }

  reasoning(text: string): void {
    this.pending += this.frames.reasoning(text);
  }

  flush(): boolean {
    const out = this.pending;
    if (out.length === 0 || this.closed) return true;
    this.pending = '';
    this.wroteSinceTick = true;
    this.bytesOut += Buffer.byteLength(out);
    if (this.res.write(out)) return true;
    // Backpressure (rare path): note the high-water mark for the log line, then pause upstream.
    if (this.res.writableLength > this.peakBuffered) this.peakBuffered = this.res.writableLength;
    return false;
  }

  end(finishReason: string, usage: Usage | undefined): void {
    this.pending += this.frames.done(finishReason, usage);
    this.flush();
    this.close();
    this.res.end();
  }

  fail(err: ProxyError, opened: boolean): void {
    const res = this.res;
    if (!opened || !res.headersSent) {
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
      return;
    }
    const frame = this.frames.error(err);
    if (frame === null) {
      // Text has no in-band error: tokens already sent are flushed, then the body is cut without
      // its final chunk so a truncated answer never looks complete.
      this.flush();
      this.close();
      res.destroy();
      return;
    }
    this.pending += frame;
    this.flush();
    this.close();
    res.end();
  }

  private tick(): void {
    if (!this.wroteSinceTick && this.frames.ping !== null && !this.closed) {
      this.res.write(this.frames.ping);
    }
    this.wroteSinceTick = false;
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.opts.onFinish?.();
  }
}
