// middleware/request-id.ts: every request gets an id: a sane client `X-Request-Id` is kept
// (it is also the idempotency and resume key), anything else is replaced by a random UUID.

import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';

/** Letters, digits, `.`, `_`, `-`; no `:` (it separates id and sequence in SSE ids). */
const SANE_ID = /^[A-Za-z0-9._-]{1,128}$/;

export function isSaneRequestId(id: unknown): id is string {
  return typeof id === 'string' && SANE_ID.test(id);
}

export function requestId(req: Request, res: Response, next: NextFunction): void {
  const given = req.headers['x-request-id'];
  const id = isSaneRequestId(given) ? given : randomUUID();
  res.locals.requestId = id;
  res.setHeader('X-Request-Id', id);
  next();
}
