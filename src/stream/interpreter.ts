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

/** Interpret one event's data. Hot path: one JSON.parse per token, no other allocation. */
export function interpret(data: string, sink: DeltaSink): void {
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
