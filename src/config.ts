// config.ts: the only reader of process.env. Validates every setting at start-up, applies the
// defaults from the SPEC's settings table, and returns one frozen object.

import { isIP } from 'node:net';
import { z } from 'zod';
import { DEFAULT_ALLOWED_MODELS } from './upstream/deepseek';

const int = (def: number, min = 0, max = Number.MAX_SAFE_INTEGER) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max))
    .prefault(String(def));

// Node timers take at most 2^31-1 ms (about 24.8 days); a longer delay fires after 1 ms, so a
// STREAM_MAX_DURATION_MS of 30 days would end every stream at once. Milliseconds that feed a
// timer are capped here, with an error naming the variable, instead.
const MAX_TIMER_MS = 2_147_483_647;
const ms = (def: number, min = 0) => int(def, min, MAX_TIMER_MS);

const list = (def: string[]) =>
  z
    .string()
    .transform((v) =>
      v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    )
    .prefault(def.join(','));

const optional = z
  .string()
  .trim()
  .transform((v) => (v === '' ? undefined : v))
  .optional();

const url = (def: string) =>
  z
    .string()
    .trim()
    .url('must be a URL')
    // "localhost:8080" parses as a URL with the scheme "localhost:": refuse it here rather than
    // fail every request later with "Unsupported protocol".
    .regex(/^https?:\/\//i, 'must be an http:// or https:// URL')
    .transform((v) => v.replace(/\/+$/, ''))
    .default(def);

// The environment schema: variable name -> rule. Keep in step with .env.example.
const schema = z.object({
  PORT: int(3000, 0, 65535),
  HOST: z.string().trim().min(1).default('0.0.0.0'),
  NODE_ENV: z.string().trim().default('development'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  DEEPSEEK_API_KEY: optional,
  DEEPSEEK_BASE_URL: url('https://api.deepseek.com'),
  DEEPSEEK_MODEL: z.string().trim().min(1).default('deepseek-v4-flash'),
  ALLOWED_MODELS: list(DEFAULT_ALLOWED_MODELS),
  UPSTREAM_MAX_SOCKETS: int(1000, 1),
  RETRY_MAX: int(3, 0, 20),
  RETRY_BASE_DELAY_MS: ms(500),
  RETRY_MAX_DELAY_MS: ms(8000),
  RETRY_AFTER_MAX_MS: ms(30000),
  UPSTREAM_CONNECT_TIMEOUT_MS: ms(10000, 1),
  UPSTREAM_HEADERS_TIMEOUT_MS: ms(30000, 1),
  UPSTREAM_IDLE_TIMEOUT_MS: ms(60000, 1),
  STREAM_MAX_DURATION_MS: ms(300000, 1),
  UPSTREAM_RESUME_MAX: int(2, 0, 20),
  HEARTBEAT_MS: ms(15000, 1),
  SSE_RETRY_MS: int(3000, 0),
  MAX_BODY_BYTES: int(1048576, 1),
  MAX_PROMPT_CHARS: int(100000, 1),
  MAX_EVENT_BYTES: int(1048576, 1024),
  RESUME_GRACE_MS: ms(15000),
  RESUME_TTL_S: int(600, 1),
  JOURNAL_MAX_BYTES_PER_STREAM: int(1048576, 1024),
  JOURNAL_MAX_BYTES: int(67108864, 1024),
  REDIS_URL: optional,
  RATE_LIMIT_WINDOW_MS: ms(1000, 1),
  RATE_LIMIT_MAX: int(10, 0),
  MAX_STREAMS_PER_CLIENT: int(4, 0),
  MAX_CONCURRENT_STREAMS: int(1000, 1),
  PROXY_API_KEYS: list([]),
  SIGNING_SECRET: optional,
  CORS_ORIGINS: list([]),
  TRUST_PROXY: z.string().trim().default('false'),
  SHUTDOWN_GRACE_MS: ms(25000),
  REQUEST_TIMEOUT_MS: ms(60000, 100),
  TLS_CERT_FILE: optional,
  TLS_KEY_FILE: optional,
  SIMULATOR_TOKEN_DELAY_MS: ms(30),
  METRICS_PORT: optional,
});

export interface Config {
  port: number;
  host: string;
  nodeEnv: string;
  logLevel: string;
  /** Undefined means: serve from the built-in simulator (never in production). */
  deepseekApiKey: string | undefined;
  deepseekBaseUrl: string;
  /** True when no key is set and the embedded simulator is the upstream. */
  useSimulator: boolean;
  defaultModel: string;
  allowedModels: readonly string[];
  upstreamMaxSockets: number;
  retryMax: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  retryAfterMaxMs: number;
  connectTimeoutMs: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  streamMaxDurationMs: number;
  upstreamResumeMax: number;
  heartbeatMs: number;
  sseRetryMs: number;
  maxBodyBytes: number;
  maxPromptChars: number;
  maxEventBytes: number;
  resumeGraceMs: number;
  resumeTtlS: number;
  journalMaxBytesPerStream: number;
  journalMaxBytes: number;
  redisUrl: string | undefined;
  rateLimitWindowMs: number;
  rateLimitMax: number;
  maxStreamsPerClient: number;
  maxConcurrentStreams: number;
  proxyApiKeys: readonly string[];
  signingSecret: string | undefined;
  corsOrigins: readonly string[];
  trustProxy: boolean | number | string;
  shutdownGraceMs: number;
  /** The longest a client may take to send a whole request (headers and body): 408 after it. */
  requestTimeoutMs: number;
  tlsCertFile: string | undefined;
  tlsKeyFile: string | undefined;
  simulatorTokenDelayMs: number;
  /** Serve /metrics on this port instead of the main one (one port per PM2 worker). */
  metricsPort: number | undefined;
}

/** A bad setting; the message names the variable. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const TRUST_PRESETS = new Set(['loopback', 'linklocal', 'uniquelocal']);

/** One entry of an Express trust-proxy list: a preset, an address, or address/prefix|netmask. */
function trustEntryValid(entry: string): boolean {
  if (TRUST_PRESETS.has(entry)) return true;
  const slash = entry.indexOf('/');
  const ip = slash < 0 ? entry : entry.slice(0, slash);
  const family = isIP(ip);
  if (family === 0) return false;
  if (slash < 0) return true;
  const range = entry.slice(slash + 1);
  if (/^\d+$/.test(range)) return Number(range) <= (family === 4 ? 32 : 128);
  return family === 4 && isIP(range) === 4; // a netmask
}

/**
 * TRUST_PROXY as Express takes it. Express would refuse a malformed list only when the app is
 * built, with "invalid IP address: ..." and no variable name, so it is checked here.
 */
function parseTrustProxy(raw: string): boolean | number | string {
  const v = raw.toLowerCase();
  if (v === 'true') return true;
  if (v === 'false' || v === '') return false;
  if (/^\d+$/.test(v)) return Number(v);
  const entries = raw.split(',').map((e) => e.trim()); // as Express splits it
  const bad = entries.find((e) => !trustEntryValid(e));
  if (bad !== undefined) {
    throw new ConfigError(
      `invalid configuration:\n  TRUST_PROXY: ${JSON.stringify(bad.slice(0, 64))} is not true, false, a hop count, an address, a CIDR range or loopback/linklocal/uniquelocal`,
    );
  }
  return raw; // an address list or a preset such as "loopback", as Express takes it
}

/** Validate an environment (process.env by default) into a frozen Config, or throw ConfigError. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const input: Record<string, string> = {};
  for (const key of Object.keys(schema.shape)) {
    const v = env[key];
    if (v !== undefined) input[key] = v;
  }
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${String(i.path[0])}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n  ${lines.join('\n  ')}`);
  }
  const e = parsed.data;
  const production = e.NODE_ENV === 'production';
  if (production && !e.DEEPSEEK_API_KEY) {
    throw new ConfigError(
      'invalid configuration:\n  DEEPSEEK_API_KEY: required when NODE_ENV=production (the simulator is for development)',
    );
  }
  if (!e.ALLOWED_MODELS.includes(e.DEEPSEEK_MODEL)) {
    throw new ConfigError(
      `invalid configuration:\n  DEEPSEEK_MODEL: "${e.DEEPSEEK_MODEL}" is not in ALLOWED_MODELS`,
    );
  }
  if ((e.TLS_CERT_FILE === undefined) !== (e.TLS_KEY_FILE === undefined)) {
    throw new ConfigError(
      'invalid configuration:\n  TLS_CERT_FILE, TLS_KEY_FILE: set both or neither',
    );
  }
  if (e.RETRY_BASE_DELAY_MS > e.RETRY_MAX_DELAY_MS) {
    throw new ConfigError(
      'invalid configuration:\n  RETRY_BASE_DELAY_MS: must not exceed RETRY_MAX_DELAY_MS',
    );
  }
  let metricsPort: number | undefined;
  if (e.METRICS_PORT !== undefined) {
    metricsPort = Number(e.METRICS_PORT);
    if (!/^\d+$/.test(e.METRICS_PORT) || metricsPort > 65535) {
      throw new ConfigError('invalid configuration:\n  METRICS_PORT: must be a port number');
    }
  }
  return Object.freeze({
    metricsPort,
    port: e.PORT,
    host: e.HOST,
    nodeEnv: e.NODE_ENV,
    logLevel: e.LOG_LEVEL,
    deepseekApiKey: e.DEEPSEEK_API_KEY,
    deepseekBaseUrl: e.DEEPSEEK_BASE_URL,
    useSimulator: !e.DEEPSEEK_API_KEY,
    defaultModel: e.DEEPSEEK_MODEL,
    allowedModels: Object.freeze(e.ALLOWED_MODELS),
    upstreamMaxSockets: e.UPSTREAM_MAX_SOCKETS,
    retryMax: e.RETRY_MAX,
    retryBaseDelayMs: e.RETRY_BASE_DELAY_MS,
    retryMaxDelayMs: e.RETRY_MAX_DELAY_MS,
    retryAfterMaxMs: e.RETRY_AFTER_MAX_MS,
    connectTimeoutMs: e.UPSTREAM_CONNECT_TIMEOUT_MS,
    headersTimeoutMs: e.UPSTREAM_HEADERS_TIMEOUT_MS,
    idleTimeoutMs: e.UPSTREAM_IDLE_TIMEOUT_MS,
    streamMaxDurationMs: e.STREAM_MAX_DURATION_MS,
    upstreamResumeMax: e.UPSTREAM_RESUME_MAX,
    heartbeatMs: e.HEARTBEAT_MS,
    sseRetryMs: e.SSE_RETRY_MS,
    maxBodyBytes: e.MAX_BODY_BYTES,
    maxPromptChars: e.MAX_PROMPT_CHARS,
    maxEventBytes: e.MAX_EVENT_BYTES,
    resumeGraceMs: e.RESUME_GRACE_MS,
    resumeTtlS: e.RESUME_TTL_S,
    journalMaxBytesPerStream: e.JOURNAL_MAX_BYTES_PER_STREAM,
    journalMaxBytes: e.JOURNAL_MAX_BYTES,
    redisUrl: e.REDIS_URL,
    rateLimitWindowMs: e.RATE_LIMIT_WINDOW_MS,
    rateLimitMax: e.RATE_LIMIT_MAX,
    maxStreamsPerClient: e.MAX_STREAMS_PER_CLIENT,
    maxConcurrentStreams: e.MAX_CONCURRENT_STREAMS,
    proxyApiKeys: Object.freeze(e.PROXY_API_KEYS),
    signingSecret: e.SIGNING_SECRET,
    corsOrigins: Object.freeze(e.CORS_ORIGINS),
    trustProxy: parseTrustProxy(e.TRUST_PROXY),
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
    tlsCertFile: e.TLS_CERT_FILE,
    tlsKeyFile: e.TLS_KEY_FILE,
    simulatorTokenDelayMs: e.SIMULATOR_TOKEN_DELAY_MS,
  });
}

/** A config for tests and embedding: defaults plus overrides, with no env involved. */
export function testConfig(overrides: Partial<Config> = {}): Config {
  return Object.freeze({ ...loadConfig({ LOG_LEVEL: 'silent' }), ...overrides });
}
