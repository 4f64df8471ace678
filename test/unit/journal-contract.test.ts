// One contract for every journal store: memory and Redis (a real redis-server) behave the same.

import { MemoryJournalStore } from '../../src/journal/memory-store';
import { RedisJournalStore } from '../../src/journal/redis-store';
import type { JournalEvent, JournalStore } from '../../src/journal/types';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';

const limits = { ttlMs: 60_000, maxBytesPerStream: 10_000, maxBytesTotal: 1_000_000 };

const ev = (
  seq: number,
  data = `t${seq}`,
  kind: JournalEvent['kind'] = 'content',
): JournalEvent => ({ seq, kind, data });

function collect(store: JournalStore, id: string, after: number) {
  const got: JournalEvent[] = [];
  let ended = false;
  const sub = store.subscribe(id, after, {
    event: (e) => got.push(e),
    end: () => {
      ended = true;
    },
  });
  return { got, ended: () => ended, sub };
}

async function until(cond: () => boolean, ms = 3000) {
  const t = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > t) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

function contract(
  name: string,
  make: () => Promise<{ store: JournalStore; done: () => Promise<void> }>,
) {
  describe(name, () => {
    let store: JournalStore;
    let done: () => Promise<void>;
    beforeAll(async () => {
      ({ store, done } = await make());
    });
    afterAll(() => done());

    it('claims an id once; a second claim returns the first meta', async () => {
      expect(await store.create('c1', 'fp-a')).toEqual({ created: true });
      const again = await store.create('c1', 'fp-b');
      expect(again.created).toBe(false);
      expect(again.created === false && again.meta.fingerprint).toBe('fp-a');
    });

    it('replays events after a seq, then follows live ones to the end', async () => {
      await store.create('r1', 'fp');
      store.append('r1', [ev(1), ev(2), ev(3)], 100);
      await until(() => true);
      const c = collect(store, 'r1', 1);
      await until(() => c.got.length === 2);
      expect(c.got.map((e) => e.seq)).toEqual([2, 3]);
      store.append('r1', [ev(4), ev(5, '{"finish_reason":"stop"}', 'done')], 100);
      store.finish('r1', 'done');
      await until(() => c.ended());
      expect(c.got.map((e) => e.seq)).toEqual([2, 3, 4, 5]);
      expect(c.got.at(-1)!.kind).toBe('done');
      const meta = await store.meta('r1');
      expect(meta).toMatchObject({ state: 'done', lastSeq: 5, fingerprint: 'fp', overflow: false });
    });

    it('keeps multi-byte text exactly', async () => {
      await store.create('u1', 'fp');
      const text = '流式 🚀 café 👩‍💻';
      store.append('u1', [ev(1, text), ev(2, '{}', 'done')], 100);
      store.finish('u1', 'done');
      const c = collect(store, 'u1', 0);
      await until(() => c.ended());
      expect(c.got[0]!.data).toBe(text);
    });

    it('returns exactly the events after any seq, whatever the batches were', async () => {
      // Batches of 1, 3 and 2 events (one upstream read each), multi-byte and empty texts.
      const texts = ['a', '流式', '', '🚀 x', 'é', '{"finish_reason":"stop"}'];
      const all = texts.map((t, i) => ev(i + 1, t, i === texts.length - 1 ? 'done' : 'content'));
      await store.create('b1', 'fp');
      store.append('b1', all.slice(0, 1), 100);
      store.append('b1', all.slice(1, 4), 100);
      store.append('b1', all.slice(4), 100);
      store.finish('b1', 'done');
      await new Promise((r) => setTimeout(r, 50));
      for (let after = 0; after <= all.length; after++) {
        expect(await store.read('b1', after)).toEqual(all.slice(after));
        const c = collect(store, 'b1', after);
        await until(() => c.ended());
        expect(c.got).toEqual(all.slice(after));
      }
      expect((await store.meta('b1'))?.lastSeq).toBe(all.length);
    });

    it('marks a stream over its byte budget as overflow and refuses more', async () => {
      await store.create('o1', 'fp');
      expect(store.append('o1', [ev(1)], 6000)).toBe(true);
      expect(store.append('o1', [ev(2)], 6000)).toBe(false);
      await until(() => true, 10);
      await new Promise((r) => setTimeout(r, 50));
      expect((await store.meta('o1'))?.overflow).toBe(true);
    });

    it('counts followers while they are subscribed', async () => {
      await store.create('f1', 'fp');
      const c = collect(store, 'f1', 0);
      await until(() => true);
      await new Promise((r) => setTimeout(r, 50));
      expect(await store.followers('f1')).toBe(1);
      c.sub.close();
      await new Promise((r) => setTimeout(r, 50));
      expect(await store.followers('f1')).toBe(0);
    });

    it('forgets a removed stream; an unknown stream ends a subscription at once', async () => {
      await store.create('x1', 'fp');
      store.remove('x1');
      await new Promise((r) => setTimeout(r, 50));
      expect(await store.meta('x1')).toBeUndefined();
      const c = collect(store, 'nope', 0);
      await until(() => c.ended());
      expect(c.got).toEqual([]);
    });

    it('answers ping', async () => {
      expect(await store.ping()).toBe(true);
    });
  });
}

contract('memory journal store', async () => {
  const store = new MemoryJournalStore(limits);
  return { store, done: () => store.shutdown() };
});

describeWithRedis('redis journal store', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(() => redis.stop());
  contract('contract', async () => {
    const store = new RedisJournalStore(redis.url, limits, `t${Date.now()}:`);
    return { store, done: () => store.shutdown() };
  });
});

describe('memory store bounds', () => {
  it('a flood of streams past the total budget evicts oldest first and never grows past the cap', async () => {
    const store = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 10_000,
      maxBytesTotal: 50_000,
    });
    let peak = 0;
    for (let i = 0; i < 500; i++) {
      await store.create(`s${i}`, 'fp');
      store.append(`s${i}`, [ev(1, 'x'.repeat(900))], 1000);
      store.finish(`s${i}`, 'done');
      peak = Math.max(peak, store.bytes);
    }
    expect(peak).toBeLessThanOrEqual(50_000);
    expect(store.size).toBeLessThanOrEqual(50);
    expect(await store.meta('s0')).toBeUndefined();
    expect(await store.meta('s499')).toBeDefined();
    await store.shutdown();
  });

  it('expires finished streams after the TTL, with an unref()ed sweep', async () => {
    const store = new MemoryJournalStore({
      ttlMs: 50,
      maxBytesPerStream: 10_000,
      maxBytesTotal: 50_000,
    });
    await store.create('ttl', 'fp');
    store.append('ttl', [ev(1)], 100);
    store.finish('ttl', 'done');
    expect(await store.meta('ttl')).toBeDefined();
    await new Promise((r) => setTimeout(r, 120));
    expect(await store.meta('ttl')).toBeUndefined();
    expect(store.bytes).toBe(0);
    await store.shutdown();
  });
});
