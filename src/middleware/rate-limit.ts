// middleware/rate-limit.ts: fairness per client (its key id, else its IP). Requests per window
// with express-rate-limit (standard RateLimit headers, Retry-After, 429 rate_limited), and a cap
// on concurrent streams per client. With Redis both hold across workers and hosts.

import type { NextFunction, Request, Response } from 'express';
import { ipKeyGenerator, rateLimit } from 'express-rate-limit';
import type Redis from 'ioredis';
import { RedisStore, type RedisReply } from 'rate-limit-redis';
import { ProxyError } from '../errors';
import { clientGone } from './errors';

export function clientKey(req: Request, res: Response): string {
  const id = res.locals.clientId as string | undefined;
  return id ?? `ip:${ipKeyGenerator(req.ip ?? 'unknown')}`;
}

export function requestRateLimit(opts: {
  windowMs: number;
  limit: number;
  redis?: Redis;
  onLimited?: () => void;
}) {
  return rateLimit({
    windowMs: opts.windowMs,
    limit: opts.limit,
    standardHeaders: 'draft-8',
    legacyHeaders: false,
    keyGenerator: clientKey,
    store: opts.redis ? redisStore(opts.redis) : undefined,
    handler: (_req, res, next) => {
      opts.onLimited?.();
      const reset = (_req as Request & { rateLimit?: { resetTime?: Date } }).rateLimit?.resetTime;
      const seconds = reset ? Math.max(1, Math.ceil((reset.getTime() - Date.now()) / 1000)) : 1;
      res.setHeader('Retry-After', String(seconds));
      next(
        new ProxyError('rate_limited', 'too many requests; slow down', { retryAfterS: seconds }),
      );
    },
  });
}

function redisStore(redis: Redis): RedisStore {
  const store = new RedisStore({
    prefix: 'dsp:rl:',
    sendCommand: (command: string, ...args: string[]) =>
      redis.call(command, ...args) as Promise<RedisReply>,
  });
  // The store loads its scripts at construction and awaits them only at the first request; with
  // Redis down at start-up they would reject unhandled. A request still sees the failure (and
  // the store loads them again): 503 store_unavailable.
  for (const script of [store.incrementScriptSha, store.getScriptSha])
    script.catch(() => undefined);
  return store;
}

/** Counts a client's open streams; shared through Redis when configured. */
export interface StreamSlots {
  acquire(client: string, max: number): Promise<boolean>;
  release(client: string): void;
}

export function memorySlots(): StreamSlots {
  const open = new Map<string, number>();
  return {
    async acquire(client, max) {
      const n = open.get(client) ?? 0;
      if (n >= max) return false;
      open.set(client, n + 1);
      return true;
    },
    release(client) {
      const n = (open.get(client) ?? 1) - 1;
      if (n <= 0) open.delete(client);
      else open.set(client, n);
    },
  };
}

/**
 * A counter per client: INCR, and back down when over the cap, in one script. The key expires
 * if a process dies holding slots; only a granted slot extends it, so a client refused again and
 * again is not kept out for ever by a count that can no longer come down.
 */
const ACQUIRE_SCRIPT = `local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`;

/** Release retries: a stream that ends while Redis is away still gives its slot back. */
const RELEASE_RETRY_MS = [1000, 5000, 30_000, 120_000];

export function redisSlots(redis: Redis, ttlMs: number, prefix = 'dsp:streams:'): StreamSlots {
  const release = (key: string, attempt: number): void => {
    redis.decr(key).catch(() => {
      const delay = RELEASE_RETRY_MS[attempt];
      if (delay !== undefined) setTimeout(() => release(key, attempt + 1), delay).unref();
    });
  };
  return {
    async acquire(client, max) {
      return (await redis.eval(ACQUIRE_SCRIPT, 1, prefix + client, max, ttlMs)) === 1;
    },
    release(client) {
      release(prefix + client, 0);
    },
  };
}

/** Holds one of the client's stream slots for the life of the response (or of its stream). */
export function streamCap(slots: StreamSlots, max: number, onLimited?: () => void) {
  return async (req: Request, res: Response, next: NextFunction): Promise<void> => {
    if (max <= 0) return next();
    // Gone while an earlier guard waited on Redis: its 'close' went unheard, and a slot taken
    // now would never come back.
    if (clientGone(res)) return;
    const client = clientKey(req, res);
    let released = false;
    let held = 0;
    /**
     * One more slot, held until release(). False when the response is gone (before, or while
     * Redis answered: then the slot goes straight back), since it would never be released.
     */
    const take = async (): Promise<boolean> => {
      if (released) return false;
      if (await slots.acquire(client, max)) {
        if (!released) {
          held++;
          return true;
        }
        slots.release(client);
        return false;
      }
      if (released) return false;
      onLimited?.();
      throw new ProxyError('rate_limited', `at most ${max} concurrent streams per client`, {
        retryAfterS: 1,
      });
    };
    const release = () => {
      if (released) return;
      released = true;
      for (; held > 0; held--) slots.release(client);
    };
    // A request that runs several streams (a batch) takes one slot for each.
    res.locals.takeMoreSlots = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) if (!(await take())) return;
    };
    // A stream the client left may go on generating for the resume grace: it keeps its slot
    // until it ends (`res.locals.slotHeldUntil`), or leaving and coming back in a loop would
    // keep any number of upstream requests running for one client.
    const done = () => {
      const hold = res.locals.slotHeldUntil as Promise<unknown> | undefined;
      if (hold) hold.then(release, release);
      else release();
    };
    // Listening before the first slot is taken: with Redis that is a round trip, and a client
    // that leaves during it must neither keep the slot (its 'close' would have gone unheard)
    // nor have a stream started for nobody.
    res.on('close', done);
    res.on('finish', done);
    if (await take()) next();
  };
}
