// middleware/cors.ts: a CORS allowlist (CORS_ORIGINS). Listed origins (or `*`) get the headers a
// streaming client needs, including the ones EventSource and resume send; others get none.

import type { NextFunction, Request, Response } from 'express';

const ALLOW_HEADERS =
  'Authorization, Content-Type, Last-Event-ID, X-Request-ID, X-Resume-At, Range, X-Timestamp, X-Signature';

export function cors(origins: readonly string[]) {
  const any = origins.includes('*');
  const allowed = new Set(origins);
  return (req: Request, res: Response, next: NextFunction): void => {
    const origin = req.headers.origin;
    if (typeof origin === 'string' && (any || allowed.has(origin))) {
      res.setHeader('Access-Control-Allow-Origin', any ? '*' : origin);
      res.setHeader('Vary', 'Origin');
      res.setHeader(
        'Access-Control-Expose-Headers',
        'X-Request-Id, Retry-After, RateLimit, RateLimit-Policy',
      );
      if (req.method === 'OPTIONS') {
        res.setHeader('Access-Control-Allow-Methods', 'GET, POST, OPTIONS');
        res.setHeader('Access-Control-Allow-Headers', ALLOW_HEADERS);
        res.setHeader('Access-Control-Max-Age', '600');
        res.status(204).end();
        return;
      }
    }
    next();
  };
}
