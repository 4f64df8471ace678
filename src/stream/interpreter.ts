// stream/interpreter.ts: SSE event data -> chat deltas (content, reasoning, finish, usage, done).
// Pure. Knows DeepSeek's chunk shapes: `content: null` while thinking, `usage` on the finish
// chunk or in an extra `choices: []` chunk, `data: [DONE]` at the end.

export interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  [k: string]: unknown;
}

export interface DeltaSink {
  /** Every parsed chunk's data, verbatim, before its deltas (for pass-through formats). */
  chunk(data: string): void;
  content(text: string): void;
  reasoning(text: string): void;
  finish(reason: string, usage: Usage | undefined): void;
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
    delta?: { content?: string | null; reasoning_content?: string | null } | null;
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
function fastToken(data: string, mark: string): string | undefined {
  const at = data.indexOf(mark);
  if (at === -1) return undefined;
  const start = at + mark.length;
  const end = stringEnd(data, start);
  // The delta must hold nothing else, the chunk must not finish, and it must look complete.
  if (end === -1 || data.charCodeAt(end + 1) !== 125 /* } */) return undefined;
  if (data.indexOf(NOT_FINISHED, end) === -1 || data.charCodeAt(data.length - 1) !== 125) {
    return undefined;
  }
  const raw = data.slice(start, end);
  if (raw.indexOf('\\') === -1) return raw;
  try {
    return JSON.parse(`"${raw}"`) as string;
  } catch {
    return undefined; // a bad escape: let the full parse report it
  }
}

/** Interpret one event's data. Hot path: no full parse for plain token chunks. */
export function interpret(data: string, sink: DeltaSink): void {
  const text = fastToken(data, CONTENT_MARK);
  if (text !== undefined) {
    sink.chunk(data);
    if (text.length > 0) sink.content(text);
    return;
  }
  const thought = fastToken(data, REASONING_MARK);
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
  sink.chunk(data);
  const choice = chunk.choices?.[0];
  if (choice === undefined) {
    if (chunk.usage) sink.usage(chunk.usage);
    else if (!Array.isArray(chunk.choices)) sink.invalid('chunk without choices');
    return;
  }
  const delta = choice.delta;
  if (delta) {
    const r = delta.reasoning_content;
    if (typeof r === 'string' && r.length > 0) sink.reasoning(r);
    const c = delta.content;
    if (typeof c === 'string' && c.length > 0) sink.content(c);
  }
  const f = choice.finish_reason;
  if (typeof f === 'string') sink.finish(f, chunk.usage ?? undefined);
}

function describeBad(data: string): string {
  const shown = data.length > 60 ? data.slice(0, 60) + '...' : data;
  return `malformed upstream event: ${JSON.stringify(shown)}`;
}
