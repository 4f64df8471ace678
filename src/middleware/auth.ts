// middleware/auth.ts: optional client auth (SPEC "Security and fairness"). Bearer keys from
// PROXY_API_KEYS, plain or as `sha256:<hex>`, compared in constant time; optional HMAC request
// signing (X-Timestamp, X-Signature: sha256=<hex> over timestamp, method, path with query and
// raw body) within a 300 s window, each signature accepted once (through Redis when shared).

import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import type Redis from 'ioredis';
import { ProxyError } from '../errors';

export const SIGNATURE_WINDOW_S = 300;

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Parse PROXY_API_KEYS entries into digests; a `sha256:<hex>` entry is a digest already. */
export function keyDigests(keys: readonly string[]): Buffer[] {
  return keys.map((k) =>
    /^sha256:[0-9a-f]{64}$/i.test(k) ? Buffer.from(k.slice(7), 'hex') : sha256(k),
  );
}

/** Bearer key check. Sets res.locals.clientId to a key id (never the key) for rate limits. */
export function apiKeyAuth(keys: readonly string[]) {
  const digests = keyDigests(keys);
  return (req: Request, res: Response, next: NextFunction): void => {
    const header = req.headers.authorization;
    const m = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      throw new ProxyError('unauthorized', 'an API key is required: Authorization: Bearer <key>');
    }
    const presented = sha256(m[1]!);
    // Compare against every key, always, so the time taken says nothing about which matched.
    let match = -1;
    for (let i = 0; i < digests.length; i++) {
      if (timingSafeEqual(presented, digests[i]!) && match < 0) match = i;
    }
    if (match < 0) {
      res.setHeader('WWW-Authenticate', 'Bearer error="invalid_token"');
      throw new ProxyError('unauthorized', 'the API key is not valid');
    }
    res.locals.clientId = `key:${presented.toString('hex').slice(0, 16)}`;
    next();
  };
}

/** Remembers signatures for the window so a captured request cannot be replayed. */
export interface ReplayGuard {
  /** True the first time a signature is seen; false for a replay. */
  firstSeen(signature: string): Promise<boolean>;
}

export function memoryReplayGuard(): ReplayGuard {
  const seen = new Map<string, number>();
  return {
    async firstSeen(sig) {
      const now = Date.now();
      // Every entry lives as long, so insertion order is expiry order: drop the expired ones
      // from the front, and stop at the first that is not (a scan of the whole map per request
      // once it held 10,000 would cost each signed request more as the rate grows).
      for (const [k, exp] of seen) {
        if (exp > now) break;
        seen.delete(k);
      }
      if (seen.has(sig)) return false;
      seen.set(sig, now + 2 * SIGNATURE_WINDOW_S * 1000);
      return true;
    },
  };
}

export function redisReplayGuard(redis: Redis, prefix = 'dsp:sig:'): ReplayGuard {
  return {
    async firstSeen(sig) {
      const ok = await redis.set(prefix + sig, '1', 'PX', 2 * SIGNATURE_WINDOW_S * 1000, 'NX');
      return ok === 'OK';
    },
  };
}

/** The string a client signs: timestamp, method, path with query, raw body, joined by "\n". */
export function signingPayload(
  timestamp: string,
  method: string,
  pathWithQuery: string,
  body: string,
): string {
  return `${timestamp}\n${method.toUpperCase()}\n${pathWithQuery}\n${body}`;
}

export function sign(secret: string, payload: string): string {
  return `sha256=${createHmac('sha256', secret).update(payload).digest('hex')}`;
}

export function signatureAuth(secret: string, guard: ReplayGuard, now: () => number = Date.now) {
  return async (req: Request, _res: Response, next: NextFunction): Promise<void> => {
    const ts = req.headers['x-timestamp'];
    const sig = req.headers['x-signature'];
    if (typeof ts !== 'string' || typeof sig !== 'string' || !/^\d{1,12}$/.test(ts)) {
      throw new ProxyError('bad_signature', 'X-Timestamp and X-Signature are required');
    }
    if (Math.abs(now() / 1000 - Number(ts)) > SIGNATURE_WINDOW_S) {
      throw new ProxyError('bad_signature', 'the timestamp is outside the 300 s window');
    }
    // Over the body's bytes as they came: a client signs bytes, and a body that is not valid
    // UTF-8 would not survive a decode (the same digest as sign() for any UTF-8 body).
    const raw = (req as Request & { rawBody?: Buffer }).rawBody;
    const hmac = createHmac('sha256', secret).update(
      signingPayload(ts, req.method, req.originalUrl, ''),
    );
    if (raw) {
      hmac.update(raw);
      // Read once: a stream would otherwise hold its request's bytes for as long as it runs.
      (req as Request & { rawBody?: Buffer }).rawBody = undefined;
    }
    const expected = Buffer.from(`sha256=${hmac.digest('hex')}`);
    const given = Buffer.from(sig);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new ProxyError('bad_signature', 'the signature does not match');
    }
    if (!(await guard.firstSeen(sig))) {
      throw new ProxyError('bad_signature', 'this signature was already used');
    }
    next();
  };
}
