// format/frames.ts: journal events -> wire frames for each client format. Envelopes are
// precomputed per stream; per token the only work is one JSON string escape and one concatenation.

export interface Frames {
  readonly contentType: string;
  /** Written once when the stream opens (SSE `retry:`), or ''. */
  readonly preamble: string;
  content(text: string, seq: number): string;
  reasoning(text: string, seq: number): string;
  /** `data` is the done event's JSON ({finish_reason, usage}). */
  done(data: string, seq: number): string;
  /** In-band error (`data` is its JSON); null when the format cannot carry one (text). */
  error(data: string, seq: number): string | null;
  /** Heartbeat comment, or null when the format has none. */
  readonly ping: string | null;
}

/**
 * SSE per the SPEC: ids `<requestId>:<seq>`, unnamed answer events, named reasoning/done/error.
 * The preamble sets the retry delay and the id the stream starts after (`afterSeq`; 0 for a new
 * stream): a block without data dispatches no event, but EventSource keeps its id, so a
 * connection lost before the first event (during a long queue) reconnects with
 * `Last-Event-ID: <requestId>:0` and follows this stream instead of starting another.
 */
export function sseFrames(requestId: string, retryMs: number, afterSeq = 0): Frames {
  const id = `id: ${requestId}:`;
  return {
    contentType: 'text/event-stream; charset=utf-8',
    preamble: `retry: ${retryMs}\n${id}${afterSeq}\n\n`,
    content(text, seq) {
      return `${id}${seq}\ndata: {"content":${JSON.stringify(text)}}\n\n`;
    },
    reasoning(text, seq) {
      return `event: reasoning\n${id}${seq}\ndata: {"content":${JSON.stringify(text)}}\n\n`;
    },
    done(data, seq) {
      return `event: done\n${id}${seq}\ndata: ${data}\n\n`;
    },
    error(data, seq) {
      return `event: error\n${id}${seq}\ndata: ${data}\n\n`;
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
    done: empty,
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
