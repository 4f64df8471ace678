// upstream/request.ts: body shaping. Turns a validated chat request into the JSON DeepSeek takes:
// aliases resolved, the thinking toggle, streaming with usage; and the prefix-completion body
// used to continue an answer after a break (SPEC "Upstream client", upstream resume).

import { resolveModel, type ThinkingType } from './deepseek';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  [k: string]: unknown;
}

export interface ChatParams {
  messages: ChatMessage[];
  model: string;
  thinking?: boolean;
  temperature?: number;
  max_tokens?: number;
  reasoning_effort?: 'high' | 'max';
}

export interface UpstreamBody {
  model: string;
  messages: ChatMessage[];
  stream: boolean;
  stream_options?: { include_usage: boolean };
  thinking?: { type: ThinkingType };
  temperature?: number;
  max_tokens?: number;
  reasoning_effort?: string;
  [k: string]: unknown;
}

export function buildUpstreamBody(p: ChatParams): UpstreamBody {
  const target = resolveModel(p.model);
  const body: UpstreamBody = {
    model: target.model,
    messages: p.messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  // An explicit toggle from the client wins over what an alias implies.
  const thinking: ThinkingType | undefined =
    p.thinking === undefined ? target.thinking : p.thinking ? 'enabled' : 'disabled';
  if (thinking) body.thinking = { type: thinking };
  if (p.temperature !== undefined) body.temperature = p.temperature;
  if (p.max_tokens !== undefined) body.max_tokens = p.max_tokens;
  if (p.reasoning_effort !== undefined && thinking !== 'disabled')
    body.reasoning_effort = p.reasoning_effort;
  return body;
}

/**
 * The body that continues `answerSoFar` through chat prefix completion: the text so far as a
 * prefix assistant message, thinking off (a continuation must not start a new reasoning pass).
 */
export function prefixContinuationBody(
  original: UpstreamBody,
  answerSoFar: string,
  tokensSoFar = 0,
): UpstreamBody {
  const { reasoning_effort: _effort, ...rest } = original;
  const body: UpstreamBody = {
    ...rest,
    messages: [...original.messages, { role: 'assistant', content: answerSoFar, prefix: true }],
    thinking: { type: 'disabled' },
  };
  // DeepSeek counts max_tokens per request: the continuation may only have what is left, or the
  // spliced answer would run past the client's limit.
  const left = remainingMaxTokens(original, tokensSoFar);
  if (left !== undefined) body.max_tokens = left;
  return body;
}

/** max_tokens minus the answer tokens already relayed; undefined when the request sets none. */
export function remainingMaxTokens(body: UpstreamBody, tokensSoFar: number): number | undefined {
  return typeof body.max_tokens === 'number' ? body.max_tokens - tokensSoFar : undefined;
}
