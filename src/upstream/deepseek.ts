// upstream/deepseek.ts: DeepSeek facts as data (SPEC "DeepSeek today"): paths, model aliases,
// finish reasons and how upstream HTTP statuses map to ours. Handlers stay free of these details.

import type { ErrorCode } from '../errors';

export const CHAT_PATH = '/chat/completions';
/** Chat prefix completion lives under the beta base. */
export const PREFIX_CHAT_PATH = '/beta/chat/completions';

export type ThinkingType = 'enabled' | 'disabled';

export interface ModelTarget {
  model: string;
  /** Thinking forced by the alias; undefined = the upstream default (on, for V4). */
  thinking?: ThinkingType;
}

/**
 * Names DeepSeek retired on 2026-07-24 that clients still send. Which names a deployment accepts
 * is configuration (ALLOWED_MODELS); what an alias means is a fact about DeepSeek, so it is here.
 */
export const MODEL_ALIASES: Readonly<Record<string, ModelTarget>> = {
  'deepseek-chat': { model: 'deepseek-v4-flash', thinking: 'disabled' },
  'deepseek-reasoner': { model: 'deepseek-v4-flash', thinking: 'enabled' },
};

export const DEFAULT_ALLOWED_MODELS = [
  'deepseek-v4-flash',
  'deepseek-v4-pro',
  'deepseek-chat',
  'deepseek-reasoner',
];

export function resolveModel(name: string): ModelTarget {
  return MODEL_ALIASES[name] ?? { model: name };
}

/** Finish reasons that end an answer normally. `insufficient_system_resource` is a cut-off. */
export const NORMAL_FINISH = new Set(['stop', 'length', 'content_filter', 'tool_calls']);
export const CUT_OFF_FINISH = 'insufficient_system_resource';

/** Upstream status before the first byte -> our error code (SPEC error table). */
export function codeForUpstreamStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
    case 422:
      return 'invalid_request';
    case 401:
    case 403:
      return 'upstream_auth_failed';
    case 402:
      return 'upstream_insufficient_balance';
    case 408:
    case 504:
      return 'upstream_timeout';
    case 429:
    case 500:
    case 502:
    case 503:
      return 'upstream_unavailable';
    default:
      return 'upstream_error';
  }
}
