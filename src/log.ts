// log.ts: the pino logger. JSON lines; secrets redacted by path so a header or config object that
// slips into a log call never prints the key.

import pino, { type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'apiKey',
  'deepseekApiKey',
  'signingSecret',
  'proxyApiKeys',
  'authorization',
  'headers.authorization',
  'headers.Authorization',
  'req.headers.authorization',
  'req.headers["x-signature"]',
  'config.headers.Authorization',
  'err.config',
  'err.request',
  'err.response',
  // One level down too: a config, headers or an axios error logged under another name.
  '*.apiKey',
  '*.deepseekApiKey',
  '*.signingSecret',
  '*.proxyApiKeys',
  '*.authorization',
  '*.headers.authorization',
  '*.headers.Authorization',
  '*.config',
  '*.request',
  '*.response',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}
