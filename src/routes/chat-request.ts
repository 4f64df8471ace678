// routes/chat-request.ts: validation of /chat-stream input (query string or JSON body) into
// ChatParams plus the response format. Every rejection is a ProxyError with the SPEC's status.

import { ProxyError } from '../errors';
import type { Config } from '../config';
import type { ChatMessage, ChatParams } from '../upstream/request';

export type StreamFormat = 'text' | 'sse';

export interface ChatStreamRequest {
  params: ChatParams;
  format: StreamFormat;
  includeReasoning: boolean;
}

type Source = Record<string, unknown>;

const ROLES = new Set(['system', 'user', 'assistant']);

function bad(message: string): ProxyError {
  return new ProxyError('invalid_request', message);
}

/** A query value: a string, or a type error for repeated keys and nested objects. */
function queryString(src: Source, key: string): string | undefined {
  const v = src[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw bad(`"${key}" must be given once, as a string`);
  return v;
}

function parseBool(v: unknown, key: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    const s = v.trim().toLowerCase();
    if (['true', '1', 'yes', 'on', 'enabled'].includes(s)) return true;
    if (['false', '0', 'no', 'off', 'disabled'].includes(s)) return false;
  }
  if (typeof v === 'object' && v !== null && 'type' in v) {
    const t = (v as { type: unknown }).type;
    if (t === 'enabled') return true;
    if (t === 'disabled') return false;
  }
  throw bad(`"${key}" must be true or false`);
}

/** A query string's number: decimal only (Number() also takes 0x1F, 0b11, 0o7 and 'Infinity'). */
const DECIMAL = /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;

/** Characters that show nothing: a prompt made only of them is empty. */
const INVISIBLE = /[\s\u200b-\u200d\u2060\ufeff]/g;

/** Nothing a reader would see (whitespace, zero-width spaces and joiners, BOMs). */
function blank(s: string): boolean {
  return s.replace(INVISIBLE, '') === '';
}

function parseNumber(
  v: unknown,
  key: string,
  min: number,
  max: number,
  int: boolean,
  fromQuery: boolean,
) {
  if (v === undefined || v === null) return undefined;
  // In a query every value is a string; in JSON a number must be a number (SPEC: wrong types).
  const n = fromQuery && typeof v === 'string' && DECIMAL.test(v) ? Number(v) : v;
  if (
    typeof n !== 'number' ||
    !Number.isFinite(n) ||
    n < min ||
    n > max ||
    (int && !Number.isInteger(n))
  ) {
    throw bad(`"${key}" must be ${int ? 'an integer' : 'a number'} from ${min} to ${max}`);
  }
  return n;
}

function parseMessages(v: unknown, maxChars: number): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw bad('"messages" must be a non-empty array');
  if (v.length > 1000) throw new ProxyError('payload_too_large', 'too many messages');
  let chars = 0;
  let hasContent = false;
  const out: ChatMessage[] = [];
  for (const m of v as unknown[]) {
    if (typeof m !== 'object' || m === null) throw bad('each message must be an object');
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || !ROLES.has(role)) {
      throw bad('each message needs a "role" of system, user or assistant');
    }
    if (typeof content !== 'string') throw bad('each message needs a string "content"');
    chars += content.length;
    if (!blank(content)) hasContent = true;
    out.push({ role: role as ChatMessage['role'], content });
  }
  if (!hasContent) throw bad('the messages are all empty');
  if (chars > maxChars) {
    throw new ProxyError('payload_too_large', `the messages exceed MAX_PROMPT_CHARS (${maxChars})`);
  }
  return out;
}

/**
 * Validate a /chat-stream request. `fromQuery` is true for GET (all values are strings).
 * `accept` is the Accept header, used when no `format` is given.
 */
export function parseChatStreamRequest(
  src: Source,
  fromQuery: boolean,
  accept: string | undefined,
  config: Config,
): ChatStreamRequest {
  const get = (k: string): unknown => (fromQuery ? queryString(src, k) : src[k]);

  let messages: ChatMessage[];
  const prompt = get('prompt');
  if (!fromQuery && src.messages !== undefined) {
    if (prompt !== undefined) throw bad('give "prompt" or "messages", not both');
    messages = parseMessages(src.messages, config.maxPromptChars);
  } else {
    if (prompt === undefined || prompt === null) throw bad('"prompt" is required');
    if (typeof prompt !== 'string') throw bad('"prompt" must be a string');
    if (blank(prompt)) throw bad('"prompt" must not be empty');
    if (prompt.length > config.maxPromptChars) {
      throw new ProxyError(
        'payload_too_large',
        `"prompt" is longer than MAX_PROMPT_CHARS (${config.maxPromptChars})`,
      );
    }
    messages = [{ role: 'user', content: prompt }];
  }
  const system = get('system');
  // An empty system field (a form left blank) is no system message, not an empty one.
  if (system !== undefined && !(typeof system === 'string' && blank(system))) {
    if (typeof system !== 'string') throw bad('"system" must be a string');
    if (
      system.length + messages.reduce((n, m) => n + m.content.length, 0) >
      config.maxPromptChars
    ) {
      throw new ProxyError('payload_too_large', 'the prompt exceeds MAX_PROMPT_CHARS');
    }
    messages = [{ role: 'system', content: system }, ...messages];
  }

  const model = get('model') ?? config.defaultModel;
  if (typeof model !== 'string') throw bad('"model" must be a string');
  if (!config.allowedModels.includes(model)) {
    throw bad(`unknown model "${model.slice(0, 64)}"; allowed: ${config.allowedModels.join(', ')}`);
  }

  const effort = get('reasoning_effort');
  if (effort !== undefined && effort !== 'high' && effort !== 'max') {
    throw bad('"reasoning_effort" must be "high" or "max"');
  }

  const formatValue = get('format');
  let format: StreamFormat;
  if (formatValue === undefined) {
    format = acceptsEventStream(accept) ? 'sse' : 'text';
  } else if (formatValue === 'sse' || formatValue === 'text') {
    format = formatValue;
  } else {
    throw bad('"format" must be "text" or "sse"');
  }

  const params: ChatParams = { messages, model };
  const thinking = parseBool(get('thinking'), 'thinking');
  if (thinking !== undefined) params.thinking = thinking;
  const temperature = parseNumber(get('temperature'), 'temperature', 0, 2, false, fromQuery);
  if (temperature !== undefined) params.temperature = temperature;
  const maxTokens = parseNumber(get('max_tokens'), 'max_tokens', 1, 1_000_000, true, fromQuery);
  if (maxTokens !== undefined) params.max_tokens = maxTokens;
  if (effort !== undefined) params.reasoning_effort = effort;

  return {
    params,
    format,
    includeReasoning: parseBool(get('include_reasoning'), 'include_reasoning') ?? false,
  };
}

/**
 * Whether an Accept header asks for `text/event-stream`: listed (case-insensitive), and not with
 * `q=0` (RFC 9110: "not acceptable"). Only that media type is looked at: wildcard ranges
 * leave the default (text), as the SPEC has SSE only when it is named.
 */
export function acceptsEventStream(accept: string | undefined): boolean {
  if (accept === undefined) return false;
  const lower = accept.toLowerCase();
  if (!lower.includes('text/event-stream')) return false;
  for (const range of lower.split(',')) {
    const [type, ...params] = range.split(';');
    if (type!.trim() !== 'text/event-stream') continue;
    let q = 1;
    for (const param of params) {
      const [name, value] = param.split('=');
      if (name!.trim() === 'q') q = Number(value?.trim());
    }
    if (q > 0) return true;
  }
  return false;
}
