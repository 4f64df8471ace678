// format/frames.ts: deltas -> wire frames for each client format. Envelopes are precomputed per
// stream; per token the only work is one JSON string escape and one concatenation.

import type { ProxyError } from '../errors';
import type { Usage } from '../stream/interpreter';

export interface Frames {
  readonly contentType: string;
  /** Written once when the stream opens (SSE `retry:`), or ''. */
  readonly preamble: string;
  content(text: string): string;
  reasoning(text: string): string;
  done(finishReason: string, usage: Usage | undefined): string;
  /** In-band error after the stream began; null when the format cannot carry one (text). */
  error(err: ProxyError): string | null;
  /** Heartbeat comment, or null when the format has none. */
  readonly ping: string | null;
}

/** SSE per the SPEC: ids `<requestId>:<seq>`, unnamed answer events, named reasoning/done/error. */
export function sseFrames(requestId: string, retryMs: number): Frames {
  const id = `id: ${requestId}:`;
  let seq = 0;
  return {
    contentType: 'text/event-stream; charset=utf-8',
    preamble: `retry: ${retryMs}\n\n`,
    content(text) {
      return `${id}${++seq}\ndata: {"content":${JSON.stringify(text)}}\n\n`;
    },
    reasoning(text) {
      return `event: reasoning\n${id}${++seq}\ndata: {"content":${JSON.stringify(text)}}\n\n`;
    },
    done(finishReason, usage) {
      const data = JSON.stringify({ finish_reason: finishReason, usage: usage ?? null });
      return `event: done\n${id}${++seq}\ndata: ${data}\n\n`;
    },
    error(err) {
      const data = JSON.stringify({ code: err.code, message: err.message, ...err.details });
      return `event: error\n${id}${++seq}\ndata: ${data}\n\n`;
    },
    ping: ': ping\n\n',
  };
}

/** Plain text: the answer's tokens concatenated; reasoning only when asked for. */
export function textFrames(includeReasoning: boolean): Frames {
  return {
    contentType: 'text/plain; charset=utf-8',
    preamble: '',
    content: identity,
    reasoning: includeReasoning ? identity : empty,
    done: () => '',
    error: () => null,
    ping: null,
  };
}

function identity(text: string): string {
  return text;
}
function empty(): string {
  return '';
}
