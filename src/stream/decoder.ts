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
  const { onEvent, onComment, onOverflow } = handlers;
  let utf8 = new TextDecoder('utf-8'); // strips one leading BOM, keeps split sequences
  // Text of an unfinished line, kept as fragments and joined once when the line ends: a long line
  // fed byte by byte stays linear instead of re-copying the prefix on every feed.
  const fragments: string[] = [];
  let fragmentsLength = 0;
  let skipLeadingLF = false; // the previous text ended with CR: an LF that follows belongs to it
  let data = '';
  let dataLines = 0;
  let eventType: string | undefined;
  let lastEventId = '';
  let dropping = false; // after an overflow: ignore input until the current event ends

  function resetEvent(): void {
    data = '';
    dataLines = 0;
    eventType = undefined;
  }

  function dispatch(): void {
    if (dataLines > 0 && !dropping) onEvent(data, eventType);
    dropping = false;
    resetEvent();
  }

  function overflow(): void {
    const size = fragmentsLength + data.length;
    fragments.length = 0;
    fragmentsLength = 0;
    resetEvent();
    dropping = true;
    onOverflow(size);
  }

  // One complete line, s[start, end). Hot path for `data:` lines.
  function line(s: string, start: number, end: number): void {
    if (start === end) {
      dispatch();
      return;
    }
    if (dropping) return;
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
      data = dataLines === 0 ? value : data + '\n' + value;
      dataLines++;
      if (data.length > maxEventChars) overflow();
      return;
    }
    if (c0 === COLON) {
      if (onComment)
        onComment(s.slice(s.charCodeAt(start + 1) === SPACE ? start + 2 : start + 1, end));
      return;
    }
    fieldLine(s, start, end);
  }

  // Rare fields, out of the hot path.
  function fieldLine(s: string, start: number, end: number): void {
    let colon = start;
    while (colon < end && s.charCodeAt(colon) !== COLON) colon++;
    const field = s.slice(start, colon);
    let v = colon + 1;
    if (v < end && s.charCodeAt(v) === SPACE) v++;
    const value = colon >= end ? '' : s.slice(v, end);
    switch (field) {
      case 'event':
        eventType = value === '' ? undefined : value;
        break;
      case 'data':
        data = dataLines === 0 ? value : data + '\n' + value;
        dataLines++;
        break;
      case 'id':
        if (value.indexOf('\0') === -1) lastEventId = value;
        break;
      default:
        // `retry` and unknown fields do not matter to a relay; WHATWG says ignore the latter.
        break;
    }
  }

  function feedText(s: string): void {
    let pos = 0;
    const n = s.length;
    if (skipLeadingLF) {
      skipLeadingLF = false;
      if (s.charCodeAt(0) === LF) pos = 1;
    }
    // Next LF and CR positions, cached so a chunk with many lines is scanned once (-2: unknown).
    let lf = -2;
    let cr = -2;
    while (pos < n) {
      if (lf !== -1 && lf < pos) lf = s.indexOf('\n', pos);
      if (cr !== -1 && cr < pos) cr = s.indexOf('\r', pos);
      const end = lf === -1 ? cr : cr === -1 ? lf : lf < cr ? lf : cr;
      if (end === -1) {
        const rest = pos === 0 ? s : s.slice(pos);
        fragments.push(rest);
        fragmentsLength += rest.length;
        if (fragmentsLength + data.length > maxEventChars) overflow();
        return;
      }
      if (fragments.length > 0) {
        fragments.push(s.slice(pos, end));
        const whole = fragments.join('');
        fragments.length = 0;
        fragmentsLength = 0;
        line(whole, 0, whole.length);
      } else {
        line(s, pos, end);
      }
      pos = end + 1;
      if (s.charCodeAt(end) === CR) {
        if (pos < n) {
          if (s.charCodeAt(pos) === LF) pos++;
        } else {
          skipLeadingLF = true;
        }
      }
    }
  }

  return {
    feed(bytes: Uint8Array): void {
      const text = utf8.decode(bytes, { stream: true });
      if (text.length > 0) feedText(text);
    },
    end(): void {
      const text = utf8.decode();
      if (text.length > 0) feedText(text);
      fragments.length = 0;
      fragmentsLength = 0;
      resetEvent();
    },
    reset(): void {
      utf8 = new TextDecoder('utf-8');
      fragments.length = 0;
      fragmentsLength = 0;
      skipLeadingLF = false;
      dropping = false;
      lastEventId = '';
      resetEvent();
    },
    get lastEventId() {
      return lastEventId;
    },
  };
}
