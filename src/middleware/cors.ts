// middleware/cors.ts: a CORS allowlist (CORS_ORIGINS). Listed origins (or `*`) get the headers a
// streaming client needs, including the ones EventSource and resume send; others get none.

import type { NextFunction, Request, Response } from 'express';

const ALLOW_HEADERS =
  'Authorization, Content-Type, Last-Event-ID, X-Request-ID, X-Resume-At, Range, X-Timestamp, X-Signature';

/** A comma-separated list of header names (RFC 9110 tokens), as a preflight asks for them. */
const HEADER_LIST = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$/;

export function cors(origins: readonly string[]) {
  const any = origins.includes('*');
  const allowed = new Set(origins);
  return (req: Request, res: Response, next: NextFunction): void => {
    // The answer depends on Origin (listed or not; sent or not): say so on every response, or a
    // shared cache may hand one without Access-Control-Allow-Origin to an allowed origin.
    res.vary('Origin');
    const origin = req.headers.origin;
    if (typeof origin === 'string' && (any || allowed.has(origin))) {
      res.setHeader('Access-Control-Allow-Origin', any ? '*' : origin);
      res.setHeader(
        'Access-Control-Expose-Headers',
        'X-Request-Id, Retry-After, RateLimit, RateLimit-Policy, Content-Range',
      );
      if (req.method === 'OPTIONS') {
        res.setHeader('Access-Control-Allow-Methods', 'GET, POST, OPTIONS');
        // SDKs add headers of their own (the openai package sends X-Stainless-*, on every
        // request): an allowed origin may send any well-formed header it asks for; a fixed list
        // would fail their preflight, and the request would never leave the browser.
        const asked = req.headers['access-control-request-headers'];
        const echo = typeof asked === 'string' && HEADER_LIST.test(asked.trim());
        res.setHeader(
          'Access-Control-Allow-Headers',
          echo ? `${ALLOW_HEADERS}, ${asked.trim()}` : ALLOW_HEADERS,
        );
        res.vary('Access-Control-Request-Headers');
        res.setHeader('Access-Control-Max-Age', '600');
        res.status(204).end();
        return;
      }
    }
    next();
  };
}
