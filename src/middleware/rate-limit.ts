// middleware/rate-limit.ts: fairness per client (its key id, else its IP). Requests per window
// with express-rate-limit (standard RateLimit headers, Retry-After, 429 rate_limited), and a cap
// on concurrent streams per client. With Redis both hold across workers and hosts.

import type { NextFunction, Request, Response } from 'express';
import { ipKeyGenerator, rateLimit } from 'express-rate-limit';
import type Redis from 'ioredis';
import { RedisStore, type RedisReply } from 'rate-limit-redis';
import { ProxyError } from '../errors';
import { clientGone, onResponseClose } from './errors';

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
  /**
   * The client's slots are still held (a batch starting a queued prompt): a count that expires
   * (Redis) must not expire under them. Errors are ignored (the count is only a limit).
   */
  keep?(client: string): void;
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

/**
 * Back down by one, never below zero: a key lost while slots were held (a Redis restart without
 * persistence, FLUSHALL, eviction) would otherwise go to -1 and give the client a slot more than
 * its cap until it expired.
 */
const RELEASE_SCRIPT = `local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n`;

export function redisSlots(redis: Redis, ttlMs: number, prefix = 'dsp:streams:'): StreamSlots {
  const release = (key: string, attempt: number): void => {
    redis.eval(RELEASE_SCRIPT, 1, key).catch(() => {
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
    keep(client) {
      // A full lifetime again from now: what a newly granted slot would give it.
      redis.pexpire(prefix + client, ttlMs).catch(() => undefined);
    },
  };
}

/**
 * The requests that may start upstream work, and so hold a stream slot: /chat-stream (GET and
 * POST), its batch and /v1/chat/completions. Not /v1/models, HEAD, or a path with no route.
 */
function startsStreams(req: Request, path: string): boolean {
  if (path === '/chat-stream') return req.method === 'GET' || req.method === 'POST';
  return (
    req.method === 'POST' && (path === '/chat-stream/batch' || path === '/v1/chat/completions')
  );
}

/**
 * A /chat-stream request that may continue or replay a stream the client already has (an SSE
 * resume, a text resume, a known X-Request-ID): it starts no upstream work, and a client at its
 * cap (its stream left during the resume grace still holds the slot) must be able to come back.
 * At the cap, the route decides (res.locals.streamCapRefusal): refused only if it starts a stream.
 */
function mayContinue(req: Request): boolean {
  const h = req.headers;
  return (
    h['last-event-id'] !== undefined ||
    h['x-request-id'] !== undefined ||
    h.range !== undefined ||
    h['x-resume-at'] !== undefined ||
    req.url.includes('lastEventId=')
  );
}

/** Holds one of the client's stream slots for the life of the response (or of its stream). */
export function streamCap(slots: StreamSlots, max: number, onLimited?: () => void) {
  return async (req: Request, res: Response, next: NextFunction): Promise<void> => {
    if (max <= 0) return next();
    // As Express routes it: case-insensitive, a trailing slash allowed.
    const path = (req.baseUrl + req.path).toLowerCase().replace(/\/+$/, '');
    if (!startsStreams(req, path)) return next();
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
    const take = async (count = true): Promise<boolean> => {
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
      if (count) onLimited?.();
      throw new ProxyError('rate_limited', `at most ${max} concurrent streams per client`, {
        retryAfterS: 1,
      });
    };
    const release = () => {
      if (released) return;
      released = true;
      for (; held > 0; held--) slots.release(client);
    };
    // A request that runs several streams (a batch) takes a slot for each it runs at once: up to
    // `n` more, as many as the cap allows (it runs the rest as those end). How many it got.
    res.locals.takeMoreSlots = async (n: number): Promise<number> => {
      let got = 0;
      while (got < n && !released && (await slots.acquire(client, max))) {
        if (released) {
          slots.release(client);
          break;
        }
        held++;
        got++;
      }
      return got;
    };
    // A batch that starts a prompt after others ended (its slots held all along) keeps the
    // count alive: with Redis it expires a stream's lifetime after the last slot was granted.
    res.locals.keepSlots = () => {
      if (!released && held > 0) slots.keep?.(client);
    };
    // A stream the client left may go on generating for the resume grace: it keeps its slot
    // until it ends (`res.locals.slotHeldUntil`), or leaving and coming back in a loop would
    // keep any number of upstream requests running for one client.
    // The hold may be replaced while awaited: a new stream's is the request's handling until
    // the stream has started, then its generation (routes/chat-stream.ts).
    const done = () => {
      const hold = res.locals.slotHeldUntil as Promise<unknown> | undefined;
      if (!hold) return release();
      const settled = () => {
        if (res.locals.slotHeldUntil === hold) release();
        else done();
      };
      hold.then(settled, settled);
    };
    // Listening before the first slot is taken: with Redis that is a round trip, and a client
    // that leaves during it must neither keep the slot (its 'close' would have gone unheard)
    // nor have a stream started for nobody.
    onResponseClose(res, done);
    res.on('finish', done);
    // /chat-stream itself only: the batch (mounted under the same guards) has no resume, and
    // nothing there would refuse it later.
    const deferrable = path === '/chat-stream' && mayContinue(req);
    let granted: boolean;
    try {
      granted = await take(!deferrable);
    } catch (err) {
      if (!deferrable || !(err instanceof ProxyError)) throw err;
      // Counted by the route if it does refuse (res.locals.onStreamCapRefused).
      res.locals.streamCapRefusal = err;
      res.locals.onStreamCapRefused = onLimited;
      granted = true;
    }
    if (granted) next();
  };
}
