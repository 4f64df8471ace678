// journal/redis-store.ts: the journal in Redis, so a resume can land on any worker or host.
// Events live in a Redis stream per request, meta in a hash, both with the TTL. One append (the
// events of one upstream read) is one stream entry, id `0-<seq of its last event>`, sent with the
// meta's lastSeq in one pipeline: a command per read, not per token (an XADD per token made the
// proxy's CPU per token 3x the bare pipe's; see docs/BENCHMARKS.md). Followers use blocking
// XREAD on a connection of their own, not polling loops.

import Redis from 'ioredis';
import { ProxyError } from '../errors';
import {
  EVENT_OVERHEAD_BYTES,
  KIND_LETTER,
  LETTER_KIND,
  type JournalEvent,
  type JournalLimits,
  type JournalStore,
  type StreamMeta,
  type StreamState,
  type SubscribeHandlers,
  type Subscription,
} from './types';

const BLOCK_MS = 1000;
const READ_COUNT = 512;

/** Claim the id and write the new stream's meta in one round trip; 1 if this caller created it. */
const CREATE_SCRIPT = `if redis.call('HSETNX', KEYS[1], 'fp', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'live', 'lastSeq', '0', 'overflow', '0', 'req', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0`;

// An entry's fields: `k` one letter per event (its kind), `d` the events' data concatenated, and,
// when there is more than one event, `n` their lengths (UTF-16 units, comma-separated).
/** The events of one entry (`fields` as Redis returns them: name, value, ...), after `afterSeq`. */
function entryEvents(
  entryId: string,
  fields: string[],
  afterSeq: number,
  out: JournalEvent[],
): void {
  let kinds = '';
  let data = '';
  let lengths: string | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const v = fields[i + 1]!;
    if (fields[i] === 'k') kinds = v;
    else if (fields[i] === 'd') data = v;
    else if (fields[i] === 'n') lengths = v;
  }
  const lastSeq = Number(entryId.slice(2));
  const first = lastSeq - kinds.length + 1;
  const sizes = lengths === undefined ? [data.length] : lengths.split(',').map(Number);
  let at = 0;
  for (let i = 0; i < kinds.length; i++) {
    const size = sizes[i] ?? 0;
    const seq = first + i;
    if (seq > afterSeq) {
      out.push({
        seq,
        kind: LETTER_KIND[kinds[i]!] ?? 'content',
        data: data.slice(at, at + size),
      });
    }
    at += size;
  }
}

/** handoff -> live, for exactly one caller. */
/** DECR that never leaves a negative count: at 0 or below, the key goes. */
const DECR_FLOORED = `local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n`;

const CLAIM_SCRIPT = `if redis.call('HGET', KEYS[1], 'state') == 'handoff' then
  redis.call('HSET', KEYS[1], 'state', 'live')
  return 1
end
return 0`;

export class RedisJournalStore implements JournalStore {
  /** TTL of a live stream's keys (JournalLimits.liveTtlMs). */
  private get liveTtlMs(): number {
    return Math.max(this.limits.ttlMs, this.limits.liveTtlMs ?? 0);
  }

  readonly shared = true;
  private readonly redis: Redis;
  /** Budget accounting for the streams this process writes. */
  private readonly written = new Map<string, number>();
  /** When each stream's keys last had their TTL set (see append). */
  private readonly refreshed = new Map<string, number>();
  /** Streams whose last append failed (Redis away): their journal stops, it never gets a hole. */
  private readonly failed = new Set<string>();
  /** Open follows, each with its close (which also gives back its follower count). */
  private readonly followersOpen = new Set<() => void>();

  constructor(
    url: string,
    private readonly limits: JournalLimits,
    private readonly prefix = 'dsp:',
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {
    this.redis = new Redis(url, {
      maxRetriesPerRequest: 2,
      enableOfflineQueue: true,
      lazyConnect: false,
      // Commands issued in the same event-loop turn go out in one write: a stream's last append
      // and its finish, and the appends of all streams that read upstream in that turn.
      enableAutoPipelining: true,
    });
    this.redis.on('error', onError);
  }

  private mKey(id: string) {
    return `${this.prefix}m:${id}`;
  }
  private eKey(id: string) {
    return `${this.prefix}e:${id}`;
  }
  private fKey(id: string) {
    return `${this.prefix}f:${id}`;
  }

  async create(id: string, fingerprint: string, request?: string) {
    const created = await this.redis.eval(
      CREATE_SCRIPT,
      1,
      this.mKey(id),
      fingerprint,
      request ?? '',
      String(this.liveTtlMs),
    );
    if (created === 1) {
      this.written.set(id, 0);
      return { created: true as const };
    }
    const meta = await this.meta(id);
    return {
      created: false as const,
      meta: meta ?? { id, fingerprint: '', state: 'live' as const, lastSeq: 0, overflow: false },
    };
  }

  async meta(id: string): Promise<StreamMeta | undefined> {
    const h = await this.redis.hgetall(this.mKey(id));
    if (!h.fp) return undefined;
    return {
      id,
      fingerprint: h.fp,
      state: (h.state as StreamState | undefined) ?? 'live',
      lastSeq: Number(h.lastSeq ?? 0),
      overflow: h.overflow === '1',
      request: h.req || undefined,
    };
  }

  async read(id: string, afterSeq: number): Promise<JournalEvent[]> {
    // Entries are named by their last event: the first one returned may start before afterSeq.
    const entries = await this.redis.xrange(this.eKey(id), `0-${afterSeq + 1}`, '+');
    const out: JournalEvent[] = [];
    for (const [entryId, fields] of entries) entryEvents(entryId, fields, afterSeq, out);
    // An append lost while Redis was away leaves a hole: never replay it as if whole.
    if (out.some((ev, i) => ev.seq !== afterSeq + 1 + i)) {
      throw new ProxyError('stream_expired', 'that stream is unknown or expired');
    }
    return out;
  }

  /** This process writes no more to the stream. */
  private forget(id: string): void {
    this.written.delete(id);
    this.refreshed.delete(id);
    this.failed.delete(id);
  }

  /** Its journal can no longer be complete: a resume is refused (410). */
  private markOverflow(id: string): void {
    this.forget(id);
    this.redis.hset(this.mKey(id), 'overflow', '1').catch(this.onError);
  }

  handoff(id: string): void {
    this.forget(id);
    this.redis.hset(this.mKey(id), 'state', 'handoff').catch(this.onError);
  }

  async claim(id: string): Promise<boolean> {
    const ok = await this.redis.eval(CLAIM_SCRIPT, 1, this.mKey(id));
    if (ok === 1) {
      // The taker writes from now on: resume its budget accounting from what is stored.
      const bytes = (await this.read(id, 0)).reduce(
        (n, ev) => n + ev.data.length + EVENT_OVERHEAD_BYTES,
        0,
      );
      this.written.set(id, bytes);
    }
    return ok === 1;
  }

  append(id: string, events: JournalEvent[], bytes: number): boolean {
    const used = this.written.get(id);
    if (used === undefined) return false;
    if (this.failed.has(id) || used + bytes > this.limits.maxBytesPerStream) {
      // Over budget, or an earlier append was lost: later ones would leave a gap that a resume
      // would replay as if whole. Stop, and mark it (a resume is refused: 410).
      this.markOverflow(id);
      return false;
    }
    this.written.set(id, used + bytes);
    const last = events[events.length - 1];
    if (!last) return true;
    const key = this.eKey(id);
    const p = this.redis.pipeline();
    if (events.length === 1) {
      p.xadd(key, `0-${last.seq}`, 'k', KIND_LETTER[last.kind], 'd', last.data);
    } else {
      let kinds = '';
      let lengths = '';
      const data: string[] = [];
      for (const ev of events) {
        kinds += KIND_LETTER[ev.kind];
        lengths += lengths === '' ? String(ev.data.length) : ',' + ev.data.length;
        data.push(ev.data);
      }
      p.xadd(key, `0-${last.seq}`, 'k', kinds, 'n', lengths, 'd', data.join(''));
    }
    p.hset(this.mKey(id), 'lastSeq', String(last.seq));
    // Both keys live RESUME_TTL_S past the last append, give or take a quarter of it: a stream
    // that runs longer than the TTL must not expire while it runs (the meta key would come back
    // without a TTL). Set again when a quarter of the TTL has gone by, not on every append.
    const now = Date.now();
    if (now - (this.refreshed.get(id) ?? 0) > this.liveTtlMs / 4) {
      this.refreshed.set(id, now);
      p.pexpire(key, this.liveTtlMs);
      p.pexpire(this.mKey(id), this.liveTtlMs);
    }
    p.exec().then(
      (results) => {
        const err = results?.find(([e]) => e)?.[0];
        if (err) this.appendFailed(id, err);
      },
      (err: unknown) => this.appendFailed(id, err),
    );
    return true;
  }

  private appendFailed(id: string, err: unknown): void {
    this.onError(err);
    // Still writing: the next append stops the journal; else mark it now.
    if (this.written.has(id)) this.failed.add(id);
    else this.markOverflow(id);
  }

  finish(id: string, state: 'done' | 'failed'): void {
    this.forget(id);
    this.redis
      .multi()
      .hset(this.mKey(id), 'state', state)
      .pexpire(this.mKey(id), this.limits.ttlMs)
      .pexpire(this.eKey(id), this.limits.ttlMs)
      .exec()
      .catch(this.onError);
  }

  remove(id: string): void {
    this.forget(id);
    this.redis.del(this.mKey(id), this.eKey(id)).catch(this.onError);
  }

  subscribe(id: string, afterSeq: number, handlers: SubscribeHandlers): Subscription {
    const conn = this.redis.duplicate({ enableAutoPipelining: false });
    conn.on('error', this.onError);
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      this.followersOpen.delete(close);
      conn.disconnect();
      // Never below zero (the key may have expired or been lost meanwhile).
      this.redis.eval(DECR_FLOORED, 1, this.fKey(id)).catch(this.onError);
    };
    this.followersOpen.add(close);
    const countMe = () => this.redis.pexpire(this.fKey(id), this.liveTtlMs).catch(this.onError);
    this.redis
      .multi()
      .incr(this.fKey(id))
      .pexpire(this.fKey(id), this.liveTtlMs)
      .exec()
      .catch(this.onError);
    // The count outlives a follower that reads for longer than its TTL: refreshed while it reads
    // (the grace check takes a count of 0 for nobody reading, and stops the upstream).
    let counted = Date.now();

    const run = async () => {
      let last = afterSeq;
      const key = this.eKey(id);
      for (;;) {
        if (closed) return;
        const res = (await conn.xread(
          'COUNT',
          READ_COUNT,
          'BLOCK',
          BLOCK_MS,
          'STREAMS',
          key,
          `0-${last}`,
        )) as Array<[string, Array<[string, string[]]>]> | null;
        if (closed) return;
        if (Date.now() - counted > this.liveTtlMs / 4) {
          counted = Date.now();
          void countMe();
        }
        const entries = res?.[0]?.[1] ?? [];
        const events: JournalEvent[] = [];
        for (const [entryId, fields] of entries) entryEvents(entryId, fields, last, events);
        for (const ev of events) {
          if (ev.seq !== last + 1) {
            // A hole (an append lost while Redis was away): end here, never skip over it.
            close();
            handlers.end();
            return;
          }
          last = ev.seq;
          handlers.event(ev);
          if (closed) return;
          if (ev.kind === 'done' || ev.kind === 'error') {
            close();
            handlers.end();
            return;
          }
        }
        if (entries.length === 0) {
          const meta = await this.meta(id);
          // Caught up with a stream that will journal nothing more (over its budget, or a lost
          // append): end now, not when its answer ends minutes later.
          if (!meta || meta.overflow || (meta.state !== 'live' && meta.lastSeq <= last)) {
            close();
            handlers.end();
            return;
          }
        }
      }
    };
    run().catch((err) => {
      if (closed) return;
      this.onError(err);
      close();
      handlers.end();
    });
    return { close };
  }

  async followers(id: string): Promise<number> {
    return Number((await this.redis.get(this.fKey(id))) ?? 0);
  }

  async ping(): Promise<boolean> {
    try {
      return (await this.redis.ping()) === 'PONG';
    } catch {
      return false;
    }
  }

  async shutdown(): Promise<void> {
    // Give the follower counts back (queued before QUIT): another worker's recorder reads them
    // to decide whether anyone still follows its stream.
    for (const close of [...this.followersOpen]) close();
    // QUIT waits for a connection that may never come (Redis down): then just drop it.
    if (this.redis.status !== 'ready') this.redis.disconnect();
    else await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
