// stream/decoder.ts: bytes -> server-sent events, per the WHATWG rules
// (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
// Pure: no I/O, no timers. The only place upstream bytes are decoded from UTF-8.
//
// Why not eventsource-parser: it holds a trailing CR until the next chunk arrives (to see whether
// an LF follows), so with CR line endings every event waits for the next write. Here a CR ends
// the line at once and a flag swallows the LF that may follow. Same fragment-array buffering.

export interface SseDecoderHandlers {
  /** One dispatched event. `type` is undefined for the default `message` type. Hot path. */
  onEvent(data: string, type: string | undefined): void;
  /** A comment line such as DeepSeek's `: keep-alive` (text after the colon and one space). */
  onComment?(text: string): void;
  /** The buffered event outgrew its bound. The decoder resets and drops the rest of that event. */
  onOverflow(bufferedChars: number): void;
  /**
   * Optional hot path. When set, a default-type event whose data is one line that arrived whole
   * (`data: ...` and the blank line after it, in one feed) is handed over as the line's bytes,
   * `bytes[start, end)`, undecoded: the caller decodes only what it needs (a token), not the whole
   * chunk. Every other event still goes to onEvent. Decoding the range as UTF-8 gives the same
   * text onEvent would have had. The bytes are the caller's buffer: use them before returning.
   */
  onDataBytes?(bytes: Buffer, start: number, end: number): void;
}

export interface SseDecoder {
  /** Feed the next bytes from the wire; any split is fine, inside a UTF-8 sequence too. */
  feed(bytes: Uint8Array): void;
  /** End of stream: flushes the UTF-8 decoder. An unterminated last event is discarded (WHATWG). */
  end(): void;
  /** Forget all state, as for a new connection. */
  reset(): void;
  /** The last `id:` seen, as WHATWG's "last event ID buffer". */
  readonly lastEventId: string;
}

const LF = 10;
const CR = 13;
const COLON = 58;
const SPACE = 32;

export function createSseDecoder(
  handlers: SseDecoderHandlers,
  maxEventChars = 1 << 20,
): SseDecoder {
  // The handlers as they are now: a caller that changes its object later changes nothing here.
  const d = new Decoder(
    {
      onEvent: handlers.onEvent,
      onComment: handlers.onComment,
      onOverflow: handlers.onOverflow,
      onDataBytes: handlers.onDataBytes,
    },
    maxEventChars,
  );
  // The API's methods work detached too (`stream.on('data', decoder.feed)`), as the closures
  // the class replaced did.
  d.feed = d.feed.bind(d);
  d.end = d.end.bind(d);
  d.reset = d.reset.bind(d);
  return d;
}

/**
 * The decoder, for callers that call its methods on it (the engine): a class, not closures over
 * shared variables, and no bound methods (createSseDecoder adds them): one object per stream.
 * The handlers are called as methods of `handlers`.
 */
export class Decoder implements SseDecoder {
  /** Take the byte path (handlers.onDataBytes). */
  private readonly bytePath: boolean;
  private utf8 = new Utf8Stream(); // strips one leading BOM, keeps split sequences
  // Text of an unfinished line, kept as fragments and joined once when the line ends: a long line
  // fed byte by byte stays linear instead of re-copying the prefix on every feed.
  private readonly fragments: string[] = [];
  private fragmentsLength = 0;
  private skipLeadingLF = false; // the previous text ended with CR: an LF that follows belongs to it
  private data = '';
  private dataLines = 0;
  private eventType: string | undefined = undefined;
  private dropping = false; // after an overflow: ignore input until the current event ends
  // The overflow came inside a line: the next line end ends that line, not the event (read as a
  // blank line, it would dispatch the rest of the oversized event as an event of its own).
  private inDroppedLine = false;
  lastEventId = '';

  /** `bytePath` false: onDataBytes is never called, even if the handlers have it. */
  constructor(
    private readonly h: SseDecoderHandlers,
    private readonly maxEventChars: number,
    bytePath = h.onDataBytes !== undefined,
  ) {
    this.bytePath = bytePath;
  }

  private resetEvent(): void {
    this.data = '';
    this.dataLines = 0;
    this.eventType = undefined;
  }

  private dispatch(): void {
    if (this.dataLines > 0 && !this.dropping) this.h.onEvent(this.data, this.eventType);
    this.dropping = false;
    this.resetEvent();
  }

  private overflow(): void {
    const size = this.fragmentsLength + this.data.length;
    this.fragments.length = 0;
    this.fragmentsLength = 0;
    this.resetEvent();
    this.dropping = true;
    this.h.onOverflow(size);
  }

  // One complete line, s[start, end). Hot path for `data:` lines.
  private line(s: string, start: number, end: number): void {
    if (start === end) {
      this.dispatch();
      return;
    }
    if (this.dropping) return;
    const c0 = s.charCodeAt(start);
    if (
      c0 === 100 && // d
      s.charCodeAt(start + 1) === 97 && // a
      s.charCodeAt(start + 2) === 116 && // t
      s.charCodeAt(start + 3) === 97 && // a
      s.charCodeAt(start + 4) === COLON
    ) {
      const v = s.charCodeAt(start + 5) === SPACE ? start + 6 : start + 5;
      const value = v >= end ? '' : s.slice(v, end);
      this.data = this.dataLines === 0 ? value : this.data + '\n' + value;
      this.dataLines++;
      if (this.data.length > this.maxEventChars) this.overflow();
      return;
    }
    if (c0 === COLON) {
      if (this.h.onComment)
        this.h.onComment(s.slice(s.charCodeAt(start + 1) === SPACE ? start + 2 : start + 1, end));
      return;
    }
    this.fieldLine(s, start, end);
  }

  // Rare fields, out of the hot path.
  private fieldLine(s: string, start: number, end: number): void {
    let colon = start;
    while (colon < end && s.charCodeAt(colon) !== COLON) colon++;
    const field = s.slice(start, colon);
    let v = colon + 1;
    if (v < end && s.charCodeAt(v) === SPACE) v++;
    const value = colon >= end ? '' : s.slice(v, end);
    switch (field) {
      case 'event':
        this.eventType = value === '' ? undefined : value;
        break;
      case 'data':
        this.data = this.dataLines === 0 ? value : this.data + '\n' + value;
        this.dataLines++;
        break;
      case 'id':
        if (value.indexOf('\0') === -1) this.lastEventId = value;
        break;
      default:
        // `retry` and unknown fields do not matter to a relay; WHATWG says ignore the latter.
        break;
    }
  }

  private feedText(s: string): void {
    let pos = 0;
    const n = s.length;
    if (this.skipLeadingLF) {
      this.skipLeadingLF = false;
      if (s.charCodeAt(0) === LF) pos = 1;
    }
    // Next LF and CR positions, cached so a chunk with many lines is scanned once (-2: unknown).
    let lf = -2;
    let cr = -2;
    const fragments = this.fragments;
    while (pos < n) {
      if (lf !== -1 && lf < pos) lf = s.indexOf('\n', pos);
      if (cr !== -1 && cr < pos) cr = s.indexOf('\r', pos);
      const end = lf === -1 ? cr : cr === -1 ? lf : lf < cr ? lf : cr;
      if (end === -1) {
        if (this.inDroppedLine) return; // more of a line already dropped
        const rest = pos === 0 ? s : s.slice(pos);
        fragments.push(rest);
        this.fragmentsLength += rest.length;
        if (this.fragmentsLength + this.data.length > this.maxEventChars) {
          this.overflow();
          this.inDroppedLine = true;
        }
        return;
      }
      if (this.inDroppedLine) {
        this.inDroppedLine = false; // the dropped line ends here; the event goes on being dropped
      } else if (fragments.length > 0) {
        fragments.push(s.slice(pos, end));
        const whole = fragments.join('');
        fragments.length = 0;
        this.fragmentsLength = 0;
        this.line(whole, 0, whole.length);
      } else {
        this.line(s, pos, end);
      }
      pos = end + 1;
      if (s.charCodeAt(end) === CR) {
        if (pos < n) {
          if (s.charCodeAt(pos) === LF) pos++;
        } else {
          this.skipLeadingLF = true;
        }
      }
    }
  }

  private feedBytes(bytes: Uint8Array): void {
    const text = this.utf8.decode(bytes);
    if (text.length > 0) this.feedText(text);
  }

  // The byte path, for onDataBytes. Taken only from a clean state (no partial line, UTF-8
  // sequence or CR pending, no event begun) on input without CR: then each LF ends a line, and a
  // line starting with `data:` right before an LF LF pair is a whole single-line event. Any other
  // complete line is decoded and goes through line(); the unfinished tail goes through feedText.
  // Returns the offset where the byte path stopped.
  private feedLines(buf: Buffer, from: number): number {
    const h = this.h;
    const n = buf.length;
    let pos = from;
    while (pos < n) {
      const lf = buf.indexOf(LF, pos);
      if (lf === -1) break;
      if (
        lf + 1 < n &&
        buf[lf + 1] === LF &&
        this.dataLines === 0 &&
        this.eventType === undefined &&
        !this.dropping &&
        buf[pos] === 100 && // d
        buf[pos + 1] === 97 && // a
        buf[pos + 2] === 116 && // t
        buf[pos + 3] === 97 && // a
        buf[pos + 4] === COLON
      ) {
        const v = buf[pos + 5] === SPACE ? pos + 6 : pos + 5;
        // Bytes >= characters: a line within the bound in bytes is within it in characters.
        if (lf - v <= this.maxEventChars) {
          h.onDataBytes!(buf, v, lf);
          pos = lf + 2;
          continue;
        }
      }
      if (lf === pos) this.dispatch();
      else {
        const s = buf.toString('utf8', pos, lf);
        this.line(s, 0, s.length);
      }
      pos = lf + 1;
    }
    return pos;
  }

  feed(bytes: Uint8Array): void {
    if (!this.bytePath) {
      this.feedBytes(bytes);
      return;
    }
    let buf = Buffer.isBuffer(bytes)
      ? bytes
      : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    // CR line ends (rare) take the text path, which knows CR LF split across feeds.
    if (this.skipLeadingLF || buf.indexOf(CR) !== -1) {
      this.feedBytes(buf);
      return;
    }
    if (this.fragments.length > 0 || this.inDroppedLine) {
      // Finish the pending line through the text path, then read the rest as bytes.
      const lf = buf.indexOf(LF);
      if (lf === -1) {
        this.feedBytes(buf);
        return;
      }
      this.feedBytes(buf.subarray(0, lf + 1));
      buf = buf.subarray(lf + 1);
    }
    const from = this.utf8.start(buf);
    if (from === -1) {
      this.feedBytes(buf);
      return;
    }
    const pos = this.feedLines(buf, from);
    if (pos < buf.length) this.feedBytes(buf.subarray(pos));
  }

  end(): void {
    const text = this.utf8.end();
    if (text.length > 0) this.feedText(text);
    this.fragments.length = 0;
    this.fragmentsLength = 0;
    this.inDroppedLine = false;
    this.resetEvent();
  }

  reset(): void {
    this.utf8 = new Utf8Stream();
    this.fragments.length = 0;
    this.fragmentsLength = 0;
    this.skipLeadingLF = false;
    this.dropping = false;
    this.inDroppedLine = false;
    this.lastEventId = '';
    this.resetEvent();
  }
}

/**
 * UTF-8 bytes -> text, split anywhere: the same text as `TextDecoder` with `{ stream: true }`
 * (U+FFFD for bad bytes, one leading BOM dropped), from Node's own UTF-8 decoder. In Node 20 a
 * streaming TextDecoder goes through an ICU converter made per stream; the profile had that
 * converter and its decode at about 1 µs per token, and its set-up per stream on top.
 *
 * How: decode each chunk up to the start of its last, incomplete sequence, and hold those 1-3
 * bytes for the next chunk. A byte that is not a continuation byte always starts a new sequence
 * in the WHATWG decoder, so cutting there gives the text of decoding everything at once.
 */
export class Utf8Stream {
  /** The incomplete sequence at the end of the last chunk, if any. */
  private held: Buffer | undefined = undefined;
  private bomChecked = false;

  /**
   * For a caller about to read `buf` as bytes instead of through decode(): where its text starts
   * (3 past a leading BOM, else 0), or -1 when it cannot be read on its own (a sequence from the
   * last chunk is pending, or a possible BOM is cut short). Reading from there is reading what
   * decode() would have returned.
   */
  start(buf: Buffer): number {
    if (this.held !== undefined || buf.length === 0) return -1;
    if (this.bomChecked) return 0;
    if (buf[0] !== 0xef) {
      this.bomChecked = true;
      return 0;
    }
    if (buf.length < 3) return -1;
    this.bomChecked = true;
    return buf[1] === 0xbb && buf[2] === 0xbf ? 3 : 0;
  }

  decode(bytes: Uint8Array): string {
    let buf = Buffer.isBuffer(bytes)
      ? bytes
      : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (this.held !== undefined) {
      buf = Buffer.concat([this.held, buf]);
      this.held = undefined;
    }
    const end = completeEnd(buf);
    // A copy: the caller may reuse its buffer.
    if (end < buf.length) this.held = Buffer.from(buf.subarray(end));
    return end === 0 ? '' : this.dropBom(buf.toString('utf8', 0, end));
  }

  /** End of input: an incomplete sequence left over becomes U+FFFD. */
  end(): string {
    const held = this.held;
    this.held = undefined;
    return held === undefined ? '' : this.dropBom(held.toString('utf8'));
  }

  private dropBom(text: string): string {
    if (this.bomChecked || text.length === 0) return text;
    this.bomChecked = true;
    return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  }
}

/** Where the last, incomplete UTF-8 sequence of `buf` starts; `buf.length` when there is none. */
function completeEnd(buf: Buffer): number {
  const n = buf.length;
  // A sequence is at most 4 bytes: one that began before the last 3 is complete (or invalid).
  const stop = n > 3 ? n - 3 : 0;
  let i = n - 1;
  // Back over continuation bytes (10xxxxxx) to the byte that began the last sequence.
  while (i >= stop && (buf[i]! & 0xc0) === 0x80) i--;
  if (i < stop) return n;
  const lead = buf[i]!;
  const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return n - i < need ? i : n;
}
