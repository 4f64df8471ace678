// errors.ts: every failure the proxy reports, as classes with status and code, and the one
// function that turns them into a response body (SPEC "Errors").

export type ErrorCode =
  | 'invalid_request'
  | 'unauthorized'
  | 'bad_signature'
  | 'not_found'
  | 'method_not_allowed'
  | 'request_id_conflict'
  | 'stream_expired'
  | 'request_timeout'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'rate_limited'
  | 'internal_error'
  | 'upstream_error'
  | 'upstream_auth_failed'
  | 'upstream_insufficient_balance'
  | 'upstream_protocol_error'
  | 'upstream_unavailable'
  | 'overloaded'
  | 'shutting_down'
  | 'store_unavailable'
  | 'upstream_timeout'
  | 'upstream_connect_timeout'
  | 'upstream_headers_timeout'
  | 'upstream_idle_timeout'
  | 'stream_duration_exceeded'
  | 'upstream_cut_off'
  | 'upstream_reset';

export const STATUS_OF: Readonly<Record<ErrorCode, number>> = {
  invalid_request: 400,
  unauthorized: 401,
  bad_signature: 403,
  not_found: 404,
  method_not_allowed: 405,
  request_id_conflict: 409,
  stream_expired: 410,
  request_timeout: 408,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  internal_error: 500,
  upstream_error: 502,
  upstream_auth_failed: 502,
  upstream_insufficient_balance: 502,
  upstream_protocol_error: 502,
  upstream_reset: 502,
  upstream_cut_off: 502,
  upstream_unavailable: 503,
  overloaded: 503,
  shutting_down: 503,
  store_unavailable: 503,
  upstream_timeout: 504,
  upstream_connect_timeout: 504,
  upstream_headers_timeout: 504,
  upstream_idle_timeout: 504,
  stream_duration_exceeded: 504,
};

export interface ProxyErrorOptions {
  /** Seconds for a `Retry-After` header (429, 503). */
  retryAfterS?: number;
  /** Upstream HTTP status, when the error came from one. */
  upstreamStatus?: number;
  /** Extra fields for the JSON body (already safe to show). */
  details?: Record<string, unknown>;
  cause?: unknown;
}

/**
 * A failure with a status and a code. Its message is always safe to show a client: it never
 * carries the upstream key, a stack or a raw upstream body.
 */
export class ProxyError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly retryAfterS: number | undefined;
  readonly upstreamStatus: number | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: ProxyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ProxyError';
    this.code = code;
    this.status = STATUS_OF[code];
    this.retryAfterS = options.retryAfterS;
    this.upstreamStatus = options.upstreamStatus;
    this.details = options.details;
  }
}

export interface ErrorBody {
  error: { code: ErrorCode; message: string; requestId?: string } & Record<string, unknown>;
}

/** The same error with another message (all else kept). */
export function withMessage(err: ProxyError, message: string): ProxyError {
  return new ProxyError(err.code, message, {
    retryAfterS: err.retryAfterS,
    upstreamStatus: err.upstreamStatus,
    details: err.details,
    cause: err.cause,
  });
}

/** Runs of a secret this long or longer are hidden: a quote cut short keeps a piece of it. */
const SECRET_PIECE = 8;
/** Pieces are looked for only in secrets this long: a piece of a short one is an ordinary word. */
const PIECES_FROM = 16;
/** Shorter than this is not a secret (a dummy key such as `x` or `EMPTY`): nothing is hidden. */
const SECRET_MIN = 6;

/**
 * A function that hides `secret` in text that came from elsewhere (an upstream's error message, a
 * malformed event we quote back): the whole secret, and, in a long one, any run of SECRET_PIECE
 * or more of its characters, in any format the upstream might echo it (with or without its
 * `sk-`). Identity without a real secret. Error paths only: it tries every piece of the secret.
 */
export function secretRedactor(secret: string | undefined): (text: string) => string {
  if (!secret || secret.length < SECRET_MIN) return (text) => text;
  const min = secret.length >= PIECES_FROM ? SECRET_PIECE : secret.length;
  return (text) => {
    // Longest first: a whole secret becomes one mark, not several.
    for (let len = secret.length; len >= min && text.length >= min; len--) {
      for (let at = 0; at + len <= secret.length; at++) {
        const piece = secret.slice(at, at + len);
        if (text.includes(piece)) text = text.split(piece).join('[redacted]');
      }
    }
    return text;
  };
}

/** The SPEC's JSON error body. */
export function errorBody(err: ProxyError, requestId?: string): ErrorBody {
  return { error: { ...err.details, code: err.code, message: err.message, requestId } };
}

/**
 * Anything thrown, as a ProxyError; unknown exceptions become a bland 500 (no stack, no text).
 * Redis (journal, rate limits, stream slots, replay guard) being unreachable is a 503 the client
 * may retry, not a bug: ioredis gives up on a command after its retries, or on a closed
 * connection.
 */
export function asProxyError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  if (isRedisUnreachable(err)) {
    return new ProxyError(
      'store_unavailable',
      'the shared store (Redis) is unreachable; try again shortly',
      { retryAfterS: 1, cause: err },
    );
  }
  return new ProxyError('internal_error', 'internal error', { cause: err });
}

/** Redis replies that mean "not now" (memory full, a replica after failover, loading, busy). */
const REDIS_NOT_NOW = /^(OOM|READONLY|LOADING|MASTERDOWN|CLUSTERDOWN|BUSY|TRYAGAIN)\b/;

function isRedisUnreachable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === 'MaxRetriesPerRequestError' || err.message === 'Connection is closed.') {
    return true;
  }
  return err.name === 'ReplyError' && REDIS_NOT_NOW.test(err.message);
}

/** The OpenAI error shape, for /v1 (what the openai SDK and the AI SDK parse). */
export function openAiErrorBody(err: ProxyError, requestId?: string) {
  const type =
    err.status === 401 || err.code === 'upstream_auth_failed'
      ? 'authentication_error'
      : err.status === 429
        ? 'rate_limit_error'
        : err.status < 500
          ? 'invalid_request_error'
          : 'api_error';
  return {
    error: { message: err.message, type, param: null, code: err.code, request_id: requestId },
  };
}
