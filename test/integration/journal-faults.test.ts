// The journal when things go wrong: a hole left by an append lost while Redis was away, streams
// that run longer than the TTL, a taken-over stream that fails, and per-client stream slots when
// Redis refuses or fails.

import Redis from 'ioredis';
import { ProxyError } from '../../src/errors';
import { MemoryJournalStore } from '../../src/journal/memory-store';
import { StreamRecorder } from '../../src/journal/recorder';
import { RedisJournalStore } from '../../src/journal/redis-store';
import type { JournalEvent, JournalStore } from '../../src/journal/types';
import { redisSlots } from '../../src/middleware/rate-limit';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { parseSse, q, request, startStack, waitFor } from '../helpers/stack';

const ev = (seq: number, kind: JournalEvent['kind'] = 'content'): JournalEvent => ({
  seq,
  kind,
  data: `t${seq}`,
});
const limits = { ttlMs: 60_000, maxBytesPerStream: 100_000, maxBytesTotal: 1_000_000 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('memory journal', () => {
  it('a stream that runs longer than the TTL does not expire while it runs', async () => {
    const store = new MemoryJournalStore({ ...limits, ttlMs: 60 });
    try {
      await store.create('long', 'fp');
      for (let seq = 1; seq <= 8; seq++) {
        expect(store.append('long', [ev(seq)], 10)).toBe(true);
        await sleep(30); // 240 ms in all: four TTLs, and several sweeps
      }
      expect((await store.meta('long'))?.lastSeq).toBe(8);
    } finally {
      await store.shutdown();
    }
  });

  it('a taken-over stream that fails keeps its journal and ends with an error event', async () => {
    const store: JournalStore = new MemoryJournalStore(limits);
    try {
      await store.create('taken', 'fp');
      store.append('taken', [ev(1), ev(2), ev(3)], 30);
      // What takeOver builds: a recorder that continues after seq 3, with nobody attached.
      const recorder = new StreamRecorder(store, 'taken', {
        graceMs: 0,
        startSeq: 3,
        abort: () => undefined,
      });
      recorder.fail(new ProxyError('upstream_unavailable', 'the upstream is unavailable'), false);
      const meta = await store.meta('taken');
      expect(meta?.state).toBe('failed');
      const events = await store.read('taken', 0);
      expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
      expect(events[3]!.kind).toBe('error');
      expect(JSON.parse(events[3]!.data).code).toBe('upstream_unavailable');
    } finally {
      await store.shutdown();
    }
  });
});

describe('stream slots in Redis, when Redis fails a release', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('the release is tried again until it lands', async () => {
    let calls = 0;
    // The release is one script call (a decrement that never goes below zero).
    const fake = {
      eval: () =>
        ++calls < 3 ? Promise.reject(new Error('Connection is closed.')) : Promise.resolve(0),
    } as unknown as Redis;
    redisSlots(fake, 60_000).release('ip:1');
    await jest.advanceTimersByTimeAsync(1000);
    expect(calls).toBe(2);
    await jest.advanceTimersByTimeAsync(5000);
    expect(calls).toBe(3);
    await jest.advanceTimersByTimeAsync(200_000);
    expect(calls).toBe(3); // landed: no more tries
  });
});

describeWithRedis('Redis journal and slots', () => {
  let redis: RedisServer;
  let client: Redis;
  let store: RedisJournalStore;
  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
    store = new RedisJournalStore(redis.url, limits, 'jf:');
  });
  afterAll(async () => {
    await store.shutdown();
    client.disconnect();
    await redis.stop();
  });

  it('a hole in the journal (an append lost while Redis was away) is never replayed as whole', async () => {
    await store.create('hole', 'fp');
    store.append('hole', [ev(1), ev(2), ev(3)], 30);
    await waitFor(() => true);
    await sleep(50);
    // A later append that landed after a lost one: seq 6, with 4 and 5 missing.
    await client.xadd('jf:e:hole', '0-6', 'k', 'c', 'd', 't6');
    await client.hset('jf:m:hole', 'lastSeq', '6', 'state', 'done');
    await expect(store.read('hole', 0)).rejects.toThrow(/expired/);
    const got: number[] = [];
    let ended = false;
    store.subscribe('hole', 0, {
      event: (e) => got.push(e.seq),
      end: () => {
        ended = true;
      },
    });
    await waitFor(() => ended, 3000, 'the follow to end at the hole');
    expect(got).toEqual([1, 2, 3]);
  });

  it('appends keep both keys living a full TTL past the last one', async () => {
    const short = new RedisJournalStore(redis.url, { ...limits, ttlMs: 2000 }, 'jt:');
    try {
      await short.create('ttl', 'fp');
      short.append('ttl', [ev(1)], 10);
      await sleep(1200);
      short.append('ttl', [ev(2)], 10);
      await sleep(100);
      expect(await client.pttl('jt:m:ttl')).toBeGreaterThan(1500);
      expect(await client.pttl('jt:e:ttl')).toBeGreaterThan(1500);
    } finally {
      await short.shutdown();
    }
  });

  it('a live stream quiet for longer than RESUME_TTL_S (a long queue) is not forgotten', async () => {
    const short = new RedisJournalStore(
      redis.url,
      { ...limits, ttlMs: 300, liveTtlMs: 10_000 },
      'jq:',
    );
    try {
      await short.create('queued', 'fp');
      await sleep(700);
      expect(await short.meta('queued')).toMatchObject({ state: 'live' });
    } finally {
      await short.shutdown();
    }
  });

  it('a follower reading for longer than RESUME_TTL_S stays counted; the count never goes negative', async () => {
    const short = new RedisJournalStore(
      redis.url,
      { ...limits, ttlMs: 300, liveTtlMs: 2000 },
      'jr:',
    );
    try {
      await short.create('followed', 'fp');
      short.append('followed', [ev(1)], 10);
      const sub = short.subscribe('followed', 0, { event: () => undefined, end: () => undefined });
      // The stream goes on writing for longer than both TTLs; its follower reads all along.
      for (let seq = 2; seq <= 8; seq++) {
        await sleep(500);
        short.append('followed', [ev(seq)], 10);
      }
      expect(await short.followers('followed')).toBe(1);
      await client.del('jr:f:followed'); // lost meanwhile (eviction, a restart)
      sub.close();
      await sleep(100);
      expect(await client.get('jr:f:followed')).toBeNull(); // not -1
      expect(await short.followers('followed')).toBe(0);
    } finally {
      await short.shutdown();
    }
  }, 10_000);

  it('taking over a handed-off stream counts against the global cap; HEAD never takes over', async () => {
    const stack = await startStack({ redisUrl: redis.url, maxConcurrentStreams: 1 });
    const seed = new RedisJournalStore(redis.url, limits, 'dsp:');
    try {
      const request_ = JSON.stringify({
        model: 'deepseek-v4-flash',
        messages: [{ role: 'user', content: 'handed over' }],
        stream: true,
        stream_options: { include_usage: true },
        thinking: { type: 'disabled' },
      });
      await seed.create('handed', 'fp', request_);
      seed.append('handed', [ev(1), ev(2), ev(3)], 30);
      seed.handoff('handed');
      await sleep(100);
      // The one stream the proxy may run is busy.
      const busy = request(stack.url + q('occupier [[tokens=300 delay=10]]'), {
        onChunk: () => undefined,
      });
      await waitFor(() => stack.app.service.active.size === 1);
      const resume = () =>
        request(stack.url + '/chat-stream', { headers: { 'last-event-id': 'handed:3' } });
      const refused = await resume();
      expect(refused.status).toBe(503);
      expect(JSON.parse(refused.body).error.code).toBe('overloaded');
      const head = await request(stack.url + '/chat-stream', {
        method: 'HEAD',
        headers: { 'last-event-id': 'handed:3' },
      });
      expect(head.status).toBe(200);
      expect(stack.sim.requests.some((r) => r.path.startsWith('/beta'))).toBe(false);
      await busy;
      await waitFor(() => stack.app.service.active.size === 0);
      const taken = await resume();
      expect(taken.status).toBe(200);
      const events = parseSse(taken.body).events;
      expect(events[0]!.id).toBe('handed:4');
      expect(events.at(-1)!.event).toBe('done');
    } finally {
      await seed.shutdown();
      await stack.close();
    }
  }, 30_000);

  it('a refused acquire does not extend the count of a client it refuses', async () => {
    const slots = redisSlots(client, 60_000, 'js:');
    expect(await slots.acquire('c', 1)).toBe(true);
    await client.pexpire('js:c', 5000); // as if the slot was taken a while ago
    expect(await slots.acquire('c', 1)).toBe(false);
    expect(await client.pttl('js:c')).toBeLessThanOrEqual(5000);
    expect(await client.get('js:c')).toBe('1');
  });
});
