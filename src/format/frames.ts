// format/frames.ts: journal events -> wire frames for each client format. Envelopes are
// precomputed per stream; per token the work is one concatenation, and the token's bytes are the
// upstream's own when it came on the byte path (no JSON escape, no UTF-8 encode).
//
// Frames are byte strings: each character is one byte of the UTF-8 output (a 'latin1' string).
// Written with the 'latin1' encoding, a frame's length is its size in bytes and the socket write
// copies it without encoding; the whole reply is never turned into UTF-8 from UTF-16 again.

import { flatten } from '../flat';
import type { TokenSource } from '../stream/interpreter';

export interface Frames {
  readonly contentType: string;
  /** Written once when the stream opens (SSE `retry:`), or ''. ASCII. */
  readonly preamble: string;
  /** One token's frame; `src`, its upstream bytes if it came on the byte path. */
  content(text: string, seq: number, src?: TokenSource): string;
  reasoning(text: string, seq: number, src?: TokenSource): string;
  /** `data` is the done event's JSON ({finish_reason, usage}). */
  done(data: string, seq: number): string;
  /** In-band error (`data` is its JSON); null when the format cannot carry one (text). */
  error(data: string, seq: number): string | null;
  /** Heartbeat comment, or null when the format has none. ASCII. */
  readonly ping: string | null;
}

/** `text` as a byte string: its UTF-8 bytes, one character each. ASCII is its own. */
export function byteString(text: string): string {
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) > 127) return Buffer.from(text, 'utf8').toString('latin1');
  }
  return text;
}

/**
 * A token's JSON string literal, without its quotes, as a byte string: the upstream's bytes when
 * there are some, else the token serialised here. Bytes as many as characters means ASCII with
 * no escape: the text itself, and no copy.
 */
function literal(text: string, src: TokenSource | undefined): string {
  if (src === undefined) return byteString(JSON.stringify(text).slice(1, -1));
  if (src.end - src.start === text.length) return text;
  return src.buf.toString('latin1', src.start, src.end);
}

/** The token's UTF-8 bytes as a byte string: the upstream's when they carry no escape. */
function plain(text: string, src: TokenSource | undefined): string {
  if (src === undefined || src.escaped || src.end - src.start === text.length) {
    return byteString(text);
  }
  return src.buf.toString('latin1', src.start, src.end);
}

/**
 * SSE per the SPEC: ids `<requestId>:<seq>`, unnamed answer events, named reasoning/done/error.
 * The preamble sets the retry delay and the id the stream starts after (`afterSeq`; 0 for a new
 * stream): a block without data dispatches no event, but EventSource keeps its id, so a
 * connection lost before the first event (during a long queue) reconnects with
 * `Last-Event-ID: <requestId>:0` and follows this stream instead of starting another.
 * The request id is ASCII (middleware/request-id.ts).
 */
export function sseFrames(requestId: string, retryMs: number, afterSeq = 0): Frames {
  return new SseFrames(requestId, retryMs, afterSeq);
}

/** A class: one object per stream, not four closures and their context. */
class SseFrames implements Frames {
  readonly contentType = 'text/event-stream; charset=utf-8';
  readonly preamble: string;
  readonly ping = ': ping\n\n';
  /** `id: <requestId>:`, before every event's seq. */
  private readonly id: string;

  constructor(requestId: string, retryMs: number, afterSeq: number) {
    // Built once and read for every token: one string, not a tree of its pieces (flatten()).
    this.id = flatten(`id: ${requestId}:`);
    this.preamble = flatten(`retry: ${retryMs}\n${this.id}${afterSeq}\n\n`);
  }

  content(text: string, seq: number, src?: TokenSource): string {
    return `${this.id}${seq}\ndata: {"content":"${literal(text, src)}"}\n\n`;
  }
  reasoning(text: string, seq: number, src?: TokenSource): string {
    return `event: reasoning\n${this.id}${seq}\ndata: {"content":"${literal(text, src)}"}\n\n`;
  }
  done(data: string, seq: number): string {
    return `event: done\n${this.id}${seq}\ndata: ${byteString(data)}\n\n`;
  }
  error(data: string, seq: number): string {
    return `event: error\n${this.id}${seq}\ndata: ${byteString(data)}\n\n`;
  }
}

const noText = (): string => '';

/** Plain text: the answer's tokens concatenated; reasoning only when asked for. Shared. */
const TEXT_FRAMES: readonly Frames[] = [false, true].map((includeReasoning) => ({
  contentType: 'text/plain; charset=utf-8',
  preamble: '',
  content: (text: string, _seq: number, src?: TokenSource) => plain(text, src),
  reasoning: includeReasoning
    ? (text: string, _seq: number, src?: TokenSource) => plain(text, src)
    : noText,
  done: noText,
  error: () => null,
  ping: null,
}));

/** Plain text frames (no per-stream state: one of two shared objects). */
export function textFrames(includeReasoning: boolean): Frames {
  return TEXT_FRAMES[includeReasoning ? 1 : 0]!;
}
