// stream/interpreter.ts: SSE event data -> chat deltas (content, reasoning, finish, usage, done).
// Pure. Knows DeepSeek's chunk shapes: `content: null` while thinking, `usage` on the finish
// chunk or in an extra `choices: []` chunk, `data: [DONE]` at the end.

import { CUT_OFF_FINISH } from '../upstream/deepseek';

export interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  [k: string]: unknown;
}

/**
 * Where a token read on the byte path came from: the contents of its JSON string literal (no
 * quotes) as `buf[start, end)`, UTF-8, with its escapes (`escaped`) as the upstream wrote them.
 * Valid only during the content()/reasoning() call that gets it (one object per stream, reused).
 * A JSON writer can copy these bytes instead of serialising the token again.
 */
export interface TokenSource {
  buf: Buffer;
  start: number;
  end: number;
  escaped: boolean;
}

export interface DeltaSink {
  /** Every parsed chunk's data, verbatim, before its deltas (for pass-through formats). */
  chunk(data: string): void;
  /**
   * interpretBytes' fast path: the chunk's data as the bytes `buf[start, end)` instead of chunk().
   * Optional: without it, such chunks are not passed on.
   */
  chunkBytes?(buf: Buffer, start: number, end: number): void;
  /** `src`: the token's bytes, when it was read on the byte path. */
  content(text: string, src?: TokenSource): void;
  reasoning(text: string, src?: TokenSource): void;
  finish(reason: string, usage: Usage | undefined): void;
  /** Optional: the chunk carries tool-call deltas (they are an answer too, with no token). */
  toolCall?(): void;
  /** Usage that came in a chunk of its own (`choices: []`). */
  usage(usage: Usage): void;
  /** `data: [DONE]`. */
  done(): void;
  /** The event could not be understood: an `upstream_protocol_error`. */
  invalid(message: string): void;
  /** The upstream reported an error inside the stream. */
  upstreamError(message: string): void;
}

interface Chunk {
  choices?: Array<{
    delta?: {
      content?: string | null;
      reasoning_content?: string | null;
      tool_calls?: unknown;
    } | null;
    finish_reason?: string | null;
  }>;
  usage?: Usage | null;
  error?: { message?: unknown } | null;
}

// Fast path. Almost every DeepSeek chunk is a token in one fixed shape:
//   {...,"choices":[{"index":0,"delta":{"content":"<text>"},"logprobs":null,"finish_reason":null}]}
// (or `{"content":null,"reasoning_content":"<text>"}` while thinking). For those we take the
// string literal straight out of the text instead of parsing the whole chunk: JSON.parse was the
// largest self-time item per token in the profile (docs/BENCHMARKS.md). Anything else, and any
// doubt, goes to the full parse below. The markers cannot occur inside a JSON string (their
// quotes would be escaped there), so finding them means they are structure.
const CONTENT_MARK = '"delta":{"content":"';
const REASONING_MARK = '"delta":{"content":null,"reasoning_content":"';
const NOT_FINISHED = '"finish_reason":null';

/** End index (the closing quote) of the JSON string literal starting at `from`, or -1. */
function stringEnd(s: string, from: number): number {
  let q = s.indexOf('"', from);
  while (q !== -1) {
    let slashes = 0;
    for (let i = q - 1; i >= from && s.charCodeAt(i) === 92; i--) slashes++;
    if ((slashes & 1) === 0) return q;
    q = s.indexOf('"', q + 1);
  }
  return -1;
}

/** The token of a plain content or reasoning chunk, or undefined to take the slow path. */
function fastToken(data: string, mark: string, scan: ByteScan | undefined): string | undefined {
  const at = data.indexOf(mark);
  if (at === -1) return undefined;
  const start = at + mark.length;
  const end = stringEnd(data, start);
  if (end === -1) return undefined;
  const env = scan?.text;
  const known =
    env !== undefined &&
    start === env.head.length &&
    data.length - end === env.tail.length &&
    data.startsWith(env.head) &&
    data.endsWith(env.tail);
  if (!known) {
    // The delta must hold nothing else, the chunk must not finish, and it must look complete.
    if (data.charCodeAt(end + 1) !== 125 /* } */) return undefined;
    if (data.indexOf(NOT_FINISHED, end) === -1 || data.charCodeAt(data.length - 1) !== 125) {
      return undefined;
    }
    // A new envelope: one plain token chunk, or the full parse deals with it.
    if (!isPlainTokenChunk(data, mark === REASONING_MARK)) return undefined;
    if (scan) scan.text = { head: data.slice(0, start), tail: data.slice(end) };
  }
  const raw = data.slice(start, end);
  if (hasControl(raw)) return undefined; // not JSON: the full parse reports it
  if (raw.indexOf('\\') === -1) return raw;
  try {
    return JSON.parse(`"${raw}"`) as string;
  } catch {
    return undefined; // a bad escape: let the full parse report it
  }
}

// The same fast path on the undecoded bytes of an event (the decoder's onDataBytes): only the
// token is decoded, never the ~200 bytes of envelope around it. Decoding whole chunks to strings
// was the largest part of our per-token CPU. Searches use memchr (Buffer.indexOf of one byte,
// ~50 ns); a multi-byte Buffer.indexOf costs ~400 ns per call on a line of this size.
const DELTA_KEY = Buffer.from('"delta":'); // the 8 bytes before the mark's `{`
const CONTENT_KEY = Buffer.from('"content":'); // the 10 bytes after it
const REASONING_REST = Buffer.from('null,"reasoning_content":"');
const NOT_FINISHED_BYTES = Buffer.from(NOT_FINISHED);
const USUAL_END = Buffer.from(`${NOT_FINISHED}}]}`); // how DeepSeek's token chunks end
const EMPTY = Buffer.alloc(0);
const NEXT_EVENT = Buffer.from('\n\ndata: ');

/**
 * The first place of `needle` in `buf` at or after `from`, remembered: Buffer.indexOf has no end
 * bound, so a search from a line that lacks the needle runs on into later lines; with the answer
 * kept, the lines in between do not search again (input that never matches stays linear).
 */
export class ByteFinder {
  private buf: Buffer | undefined;
  private from = 0;
  private at = -1;

  constructor(private readonly needle: Buffer | number) {}

  find(buf: Buffer, from: number): number {
    if (buf === this.buf && from >= this.from && (this.at === -1 || this.at >= from)) {
      return this.at;
    }
    this.buf = buf;
    this.from = from;
    this.at = buf.indexOf(this.needle, from);
    return this.at;
  }

  /** Forget the buffer (the caller may reuse it). */
  clear(): void {
    this.buf = undefined;
  }
}

const BRACE = new ByteFinder(123 /* { */);
const NOT_FINISHED_FINDER = new ByteFinder(NOT_FINISHED_BYTES);

/**
 * Per stream: the searches of interpretBytes, remembered within one buffer (clear() before a
 * buffer's bytes may change, and whenever convenient after a feed), and the envelope of the last
 * token chunk checked by a full parse.
 *
 * The fast paths read the token without parsing the chunk, so on their own they would take a
 * chunk with a broken envelope (`{"id":"x",BROKEN,"choices":[...]}`) as a token, where the SPEC
 * wants an upstream_protocol_error. DeepSeek's token chunks within one answer differ only in the
 * token: the text before the token literal (through its opening quote) and after it (from its
 * closing quote) repeat. So the first chunk of each envelope is parsed in full, and a later chunk
 * whose envelope is byte for byte the same is well-formed without a parse: one comparison per
 * token, no parse.
 */
export class ByteScan {
  // The searches remember positions in the current buffer only (clear() after each feed), keyed
  // by the buffer's identity: every stream shares them, a re-entrant search only searches again.
  readonly brace = BRACE;
  readonly notFinished = NOT_FINISHED_FINDER;
  /**
   * The last token's bytes, handed to the sink with it (valid during that call only). Per
   * stream: a sink that made another stream interpret bytes before reading it would read that
   * stream's token.
   */
  readonly token: TokenSource = { buf: EMPTY, start: 0, end: 0, escaped: false };
  /**
   * The checked envelope, as bytes (interpretBytes): the tail, the blank line and `data: ` that
   * end one event and begin the next, and the head. Consecutive token events of one read are
   * checked with one comparison each instead of two. Its first `tailLength` bytes are the tail,
   * its last `headLength` the head: one buffer, no views of it kept.
   */
  joint: Buffer | undefined;
  headLength = 0;
  tailLength = 0;
  /** ...and as text (interpret). */
  text: { head: string; tail: string } | undefined;
  /** The checked byte envelope is a reasoning chunk's (`"content":null,"reasoning_content":"`). */
  headIsReasoning = false;
  /** An event starting at `nextHead` in `nextBuf` has had its head checked by the joint. */
  nextBuf: Buffer | undefined;
  nextHead = -1;

  /**
   * Keep the envelope of `buf[start, end)` whose token literal is `[p, q)`. One allocation of its
   * own, not Node's pool: a small Buffer is a slice of a shared 8 KiB block, and a slice kept for
   * a stream's length keeps the whole block.
   */
  setEnvelope(buf: Buffer, start: number, p: number, q: number, end: number, reasoning: boolean) {
    const headLength = p - start;
    const tailLength = end - q;
    const own = Buffer.allocUnsafeSlow(tailLength + NEXT_EVENT.length + headLength);
    buf.copy(own, 0, q, end);
    NEXT_EVENT.copy(own, tailLength);
    buf.copy(own, tailLength + NEXT_EVENT.length, start, p);
    this.joint = own;
    this.headLength = headLength;
    this.tailLength = tailLength;
    this.headIsReasoning = reasoning;
    this.nextBuf = undefined;
  }

  /** The checked head is `buf[start, p)`. */
  headIs(buf: Buffer, start: number, p: number): boolean {
    const joint = this.joint!;
    return joint.compare(buf, start, p, joint.length - this.headLength, joint.length) === 0;
  }

  /** The checked tail is `buf[q, end)`. */
  tailIs(buf: Buffer, q: number, end: number): boolean {
    return this.joint!.compare(buf, q, end, 0, this.tailLength) === 0;
  }

  clear(): void {
    this.brace.clear();
    this.notFinished.clear();
    this.token.buf = EMPTY;
    this.nextBuf = undefined;
  }
}

/**
 * Interpret one event given as its data's bytes, `buf[start, end)`: plain token chunks are read
 * from the bytes, anything else is decoded and goes to interpret(). Same results as interpret(),
 * except that fast-path chunks go to chunkBytes() instead of chunk().
 */
export function interpretBytes(
  buf: Buffer,
  start: number,
  end: number,
  scan: ByteScan,
  sink: DeltaSink,
): void {
  // Almost every event is a token chunk in the envelope checked before: try that first. Its
  // token starts right after the known head and ends right before the known tail, so no search.
  if (scan.joint !== undefined) {
    const p = start + scan.headLength;
    const q = end - scan.tailLength;
    if (q >= p && buf[q] === 34 /* " */) {
      const text = knownToken(buf, start, p, q, end, scan);
      if (text !== undefined) {
        sink.chunkBytes?.(buf, start, end);
        handToken(sink, text, scan.headIsReasoning, scan.token);
        return;
      }
    }
  }
  // The first `"delta":{"content":` is where its `{` is the first `{` that completes it.
  let brace = scan.brace.find(buf, start + DELTA_KEY.length);
  while (brace !== -1 && brace < end) {
    if (hasAt(buf, brace - DELTA_KEY.length, DELTA_KEY) && hasAt(buf, brace + 1, CONTENT_KEY)) {
      let p = brace + 1 + CONTENT_KEY.length;
      let reasoning = false;
      if (buf[p] === 34 /* " */) p++;
      else if (hasAt(buf, p, REASONING_REST)) {
        p += REASONING_REST.length;
        reasoning = true;
      } else break;
      const text = tokenAt(buf, start, p, end, scan, reasoning);
      if (text === undefined) break;
      sink.chunkBytes?.(buf, start, end);
      handToken(sink, text, reasoning, scan.token);
      return;
    }
    brace = scan.brace.find(buf, brace + 1);
  }
  interpret(buf.toString('utf8', start, end), sink, scan);
}

/**
 * A byte-path token to the sink, with its bytes unless they were not valid UTF-8 (the text has
 * U+FFFD for them): a writer copying them would send invalid UTF-8 on.
 */
function handToken(sink: DeltaSink, text: string, reasoning: boolean, token: TokenSource): void {
  if (text.length === 0) return;
  const src = text.indexOf('\uFFFD') === -1 ? token : undefined;
  if (reasoning) sink.reasoning(text, src);
  else sink.content(text, src);
}

/** `what` at buf[p...]; false past the end of buf. */
function hasAt(buf: Buffer, p: number, what: Buffer): boolean {
  if (p < 0) return false;
  for (let i = 0; i < what.length; i++) if (buf[p + i] !== what[i]) return false;
  return true;
}

/**
 * As fastToken: the string literal from `p`, if the event `buf[start, end)` is a plain
 * unfinished token chunk with a well-formed envelope.
 */
function tokenAt(
  buf: Buffer,
  start: number,
  p: number,
  end: number,
  scan: ByteScan,
  reasoning: boolean,
): string | undefined {
  let q = p;
  let escaped = false;
  for (;;) {
    if (q >= end) return undefined;
    const b = buf[q]!;
    if (b === 34 /* " */) break;
    // A raw control character is not JSON (a string must escape it): the full parse reports it.
    if (b < 32) return undefined;
    if (b === 92 /* \ */) {
      escaped = true;
      q++;
    }
    q++;
  }
  const known =
    scan.joint !== undefined &&
    p - start === scan.headLength &&
    end - q === scan.tailLength &&
    scan.headIs(buf, start, p) &&
    scan.tailIs(buf, q, end);
  if (!known) {
    if (buf[q + 1] !== 125 /* } */ || buf[end - 1] !== 125) return undefined;
    const usual = end - USUAL_END.length;
    if (!(usual > q && hasAt(buf, usual, USUAL_END))) {
      const nf = scan.notFinished.find(buf, q);
      if (nf === -1 || nf + NOT_FINISHED_BYTES.length > end) return undefined;
    }
    // A new envelope: well-formed JSON, or the slow path reports it. Copied: `buf` is Node's.
    if (!isPlainTokenChunk(buf.toString('utf8', start, end), reasoning)) return undefined;
    scan.setEnvelope(buf, start, p, q, end, reasoning);
  }
  return decodeLiteral(buf, p, q, escaped, scan.token);
}

/**
 * The token of an event `buf[start, end)` whose known head ends at `p` and whose tail starts at
 * `q` (a quote), if the bytes between are one whole string literal and head and tail are the
 * checked envelope's, byte for byte.
 */
function knownToken(
  buf: Buffer,
  start: number,
  p: number,
  q: number,
  end: number,
  scan: ByteScan,
): string | undefined {
  let escaped = false;
  for (let i = p; i < q; i++) {
    const b = buf[i]!;
    // A quote here would end the literal before the tail; a raw control character is not JSON.
    if (b === 34 /* " */ || b < 32) return undefined;
    if (b === 92 /* \ */) {
      escaped = true;
      i++; // the escaped byte; an escape of the tail's quote leaves i at q and fails below
      if (i >= q) return undefined;
    }
  }
  // The head: checked already when the event before it in this read was (see joint).
  if (!(buf === scan.nextBuf && start === scan.nextHead) && !scan.headIs(buf, start, p)) {
    return undefined;
  }
  // The tail, and with it the head of the next event if one follows in this read.
  const joint = scan.joint!;
  if (q + joint.length <= buf.length && joint.compare(buf, q, q + joint.length) === 0) {
    scan.nextBuf = buf;
    scan.nextHead = q + joint.length - scan.headLength;
  } else if (!scan.tailIs(buf, q, end)) return undefined;
  return decodeLiteral(buf, p, q, escaped, scan.token);
}

/**
 * The string literal's contents `buf[p, q)`, unescaped, with `src` set to them; undefined for a
 * bad escape.
 */
function decodeLiteral(
  buf: Buffer,
  p: number,
  q: number,
  escaped: boolean,
  src: TokenSource,
): string | undefined {
  src.buf = buf;
  src.start = p;
  src.end = q;
  src.escaped = escaped;
  const raw = buf.toString('utf8', p, q);
  if (!escaped) return raw;
  try {
    return JSON.parse(`"${raw}"`) as string;
  } catch {
    return undefined; // a bad escape: let the full parse report it
  }
}

/**
 * Interpret one event's data. Hot path: no full parse for plain token chunks whose envelope was
 * checked before (`scan`, per stream; without it every chunk is checked).
 */
export function interpret(data: string, sink: DeltaSink, scan?: ByteScan): void {
  const text = fastToken(data, CONTENT_MARK, scan);
  if (text !== undefined) {
    sink.chunk(data);
    if (text.length > 0) sink.content(text);
    return;
  }
  const thought = fastToken(data, REASONING_MARK, scan);
  if (thought !== undefined) {
    sink.chunk(data);
    if (thought.length > 0) sink.reasoning(thought);
    return;
  }
  if (data === '[DONE]') {
    sink.done();
    return;
  }
  let chunk: Chunk;
  try {
    chunk = JSON.parse(data) as Chunk;
  } catch {
    sink.invalid(describeBad(data));
    return;
  }
  if (chunk === null || typeof chunk !== 'object') {
    sink.invalid(describeBad(data));
    return;
  }
  if (chunk.error) {
    const m = chunk.error.message;
    sink.upstreamError(typeof m === 'string' ? m : 'the upstream reported an error');
    return;
  }
  const choice = chunk.choices?.[0];
  if (choice !== undefined && (choice === null || typeof choice !== 'object')) {
    sink.invalid('chunk with a choice that is not an object');
    return;
  }
  // Read before the pass-through copy below takes them off the chunk.
  const finish = choice?.finish_reason;
  const usage = chunk.usage ?? undefined;
  if (choice && finish === CUT_OFF_FINISH) {
    // Not a finish for the client: the answer goes on (continued upstream) or ends in an error.
    // Pass-through formats get the chunk without it, and only if it carries a delta.
    const d = choice.delta;
    if (d && (d.content || d.reasoning_content || d.tool_calls)) {
      choice.finish_reason = null;
      delete chunk.usage;
      sink.chunk(JSON.stringify(chunk));
    }
  } else sink.chunk(data);
  if (choice === undefined) {
    if (chunk.usage) sink.usage(chunk.usage);
    else if (!Array.isArray(chunk.choices)) sink.invalid('chunk without choices');
    return;
  }
  const delta = choice.delta;
  if (delta !== undefined && delta !== null && typeof delta !== 'object') {
    sink.invalid('chunk with a delta that is not an object');
    return;
  }
  if (delta) {
    const r = delta.reasoning_content;
    if (typeof r === 'string' && r.length > 0) sink.reasoning(r);
    const c = delta.content;
    if (typeof c === 'string' && c.length > 0) sink.content(c);
    if (Array.isArray(delta.tool_calls) && delta.tool_calls.length > 0) sink.toolCall?.();
  }
  if (typeof finish === 'string') sink.finish(finish, usage);
}

/** A character below U+0020, which a JSON string must escape. */
function hasControl(raw: string): boolean {
  for (let i = 0; i < raw.length; i++) if (raw.charCodeAt(i) < 32) return true;
  return false;
}

/**
 * The check that makes an envelope known (done once per envelope: its later chunks differ only
 * in the token): the chunk parses, and it is nothing but one token. One choice, not finishing,
 * whose delta holds the token and nothing else; no error, no usage. Anything else (an error
 * object beside the choices, a second choice, a finish beside a nested `finish_reason: null`)
 * goes to the full parse, which reads it whole.
 */
function isPlainTokenChunk(data: string, reasoning: boolean): boolean {
  let chunk: Chunk;
  try {
    chunk = JSON.parse(data) as Chunk;
  } catch {
    return false;
  }
  if (chunk === null || typeof chunk !== 'object' || Array.isArray(chunk)) return false;
  if (chunk.error != null || chunk.usage != null) return false;
  const choices = chunk.choices;
  if (!Array.isArray(choices) || choices.length !== 1) return false;
  const choice = choices[0];
  if (choice === null || typeof choice !== 'object' || choice.finish_reason != null) return false;
  const delta = choice.delta;
  if (delta === null || typeof delta !== 'object') return false;
  const keys = Object.keys(delta).length;
  return reasoning
    ? keys === 2 && delta.content === null && typeof delta.reasoning_content === 'string'
    : keys === 1 && typeof delta.content === 'string';
}

function describeBad(data: string): string {
  const shown = data.length > 60 ? data.slice(0, 60) + '...' : data;
  return `malformed upstream event: ${JSON.stringify(shown)}`;
}
