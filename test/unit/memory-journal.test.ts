// The in-memory journal's budget and TTL with live streams, in the cases a review found broken:
// a live stream evicted while its generation still runs, queued streams evicted for nothing, and
// a live stream swept while its upstream was still queued.

import { MemoryJournalStore } from '../../src/journal/memory-store';
import type { JournalEvent } from '../../src/journal/types';

const events = (from: number, n: number, text = 'x'.repeat(100)): JournalEvent[] =>
  Array.from({ length: n }, (_, i) => ({ seq: from + i, kind: 'content' as const, data: text }));
const bytesOf = (evs: JournalEvent[]) => evs.reduce((n, e) => n + e.data.length + 16, 0);

describe('MemoryJournalStore with live streams', () => {
  let store: MemoryJournalStore;
  afterEach(() => store?.shutdown());

  it('a live stream evicted by the total budget is not re-created under its id until it ends', async () => {
    store = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 100_000,
      maxBytesTotal: 1000,
    });
    expect((await store.create('A', 'fa')).created).toBe(true);
    const a = events(1, 3);
    expect(store.append('A', a, bytesOf(a))).toBe(true);
    expect((await store.create('B', 'fb')).created).toBe(true);
    const b = events(1, 8);
    expect(store.append('B', b, bytesOf(b))).toBe(true); // over the total: A goes
    // A retry of A finds a stream that is no longer available (a replay answers 410)...
    const meta = await store.meta('A');
    expect(meta).toMatchObject({ id: 'A', fingerprint: 'fa', overflow: true });
    const again = await store.create('A', 'fa');
    expect(again.created).toBe(false);
    // ...and A's first generation, still running, writes nowhere.
    expect(store.append('A', events(4, 1), 116)).toBe(false);
    expect(await store.read('A', 0)).toEqual([]);
    // Once it ends, the id is free again.
    store.finish('A', 'done');
    expect(await store.meta('A')).toBeUndefined();
    expect((await store.create('A', 'fa')).created).toBe(true);
  });

  it('eviction keeps live streams that have journaled nothing (they free no bytes)', async () => {
    store = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 100_000,
      maxBytesTotal: 1000,
    });
    for (const id of ['Q1', 'Q2', 'Q3']) await store.create(id, 'f');
    await store.create('S1', 'f');
    const s1 = events(1, 5);
    store.append('S1', s1, bytesOf(s1));
    await store.create('S2', 'f');
    const s2 = events(1, 5);
    store.append('S2', s2, bytesOf(s2)); // over the total: only S1 frees anything
    for (const id of ['Q1', 'Q2', 'Q3']) {
      expect(await store.meta(id)).toMatchObject({ state: 'live', overflow: false });
    }
    expect((await store.meta('S1'))?.overflow).toBe(true);
  });

  it('a live stream is not swept at its TTL (a long upstream queue journals nothing)', async () => {
    store = new MemoryJournalStore({
      ttlMs: 40,
      maxBytesPerStream: 100_000,
      maxBytesTotal: 100_000,
    });
    await store.create('L', 'f');
    await store.create('D', 'f');
    store.finish('D', 'done');
    await new Promise((r) => setTimeout(r, 200)); // several sweeps
    expect(await store.meta('L')).toMatchObject({ state: 'live' });
    expect(await store.meta('D')).toBeUndefined();
  });

  it("counts a stream's TTL from when it stops being live, not from its last event", async () => {
    store = new MemoryJournalStore({
      ttlMs: 300,
      maxBytesPerStream: 100_000,
      maxBytesTotal: 100_000,
    });
    for (const id of ['F', 'H']) {
      await store.create(id, 'f');
      store.append(id, [{ seq: 1, kind: 'content', data: 'x' }], 10);
    }
    await new Promise((r) => setTimeout(r, 400)); // longer than the TTL since the last event
    store.finish('F', 'done');
    store.handoff('H');
    // Just stopped being live: readable for a TTL from now.
    expect(await store.meta('F')).toMatchObject({ state: 'done', lastSeq: 1 });
    expect(await store.meta('H')).toMatchObject({ state: 'handoff', lastSeq: 1 });
    await new Promise((r) => setTimeout(r, 700));
    expect(await store.meta('F')).toBeUndefined();
    expect(await store.meta('H')).toBeUndefined();
  });
});

describe('MemoryJournalStore claims at once', () => {
  it('answers create() with the claim itself, not a promise, taken or not', () => {
    const store = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 1000,
      maxBytesTotal: 10_000,
    });
    try {
      // The route sends the upstream request in the same turn when the claim is not a promise.
      const first = store.create('C', 'fc');
      expect(first).not.toBeInstanceOf(Promise);
      expect(first).toEqual({ created: true });
      const again = store.create('C', 'other');
      expect(again).not.toBeInstanceOf(Promise);
      expect(again).toMatchObject({ created: false, meta: { id: 'C', fingerprint: 'fc' } });
    } finally {
      store.shutdown();
    }
  });
});

describe('MemoryJournalStore keeps texts joined in blocks', () => {
  let store: MemoryJournalStore;
  afterEach(() => store?.shutdown());

  const texts = ['a', '', '世界', '😀 ok', ' token,', '{"usage":null}', 'x'.repeat(5000), 'é'];
  const kinds = ['content', 'reasoning', 'content', 'content', 'done', 'error'] as const;

  it('reads back every event, from every position, across batches of any size', async () => {
    store = new MemoryJournalStore({ ttlMs: 60_000, maxBytesPerStream: 1e9, maxBytesTotal: 1e9 });
    await store.create('S', 'f');
    const all: JournalEvent[] = [];
    // Batches of 1, 3, 7, 32, 33, ...: blocks fill in the middle of batches and at their ends.
    const sizes = [1, 3, 7, 32, 33, 1, 64, 2, 29, 31];
    let seq = 1;
    for (const size of sizes) {
      const batch: JournalEvent[] = [];
      for (let i = 0; i < size; i++, seq++) {
        batch.push({ seq, kind: kinds[seq % kinds.length]!, data: texts[seq % texts.length]! });
      }
      all.push(...batch);
      expect(store.append('S', batch, bytesOf(batch))).toBe(true);
    }
    for (let after = 0; after <= all.length + 1; after++) {
      expect(await store.read('S', after)).toEqual(all.filter((e) => e.seq > after));
    }
    // A follower from the middle of a joined block gets the rest, then what comes next.
    const got: JournalEvent[] = [];
    const sub = store.subscribe('S', 45, { event: (e) => got.push(e), end: () => undefined });
    const more = events(all.length + 1, 2, 'next');
    store.append('S', more, bytesOf(more));
    sub.close();
    expect(got).toEqual([...all.filter((e) => e.seq > 45), ...more]);
  });

  it('a finished stream reads back the same from every position, and takes appends after', async () => {
    store = new MemoryJournalStore({ ttlMs: 60_000, maxBytesPerStream: 1e9, maxBytesTotal: 1e9 });
    // Lengths whose codes fit in a char code, and one that does not (20,000 x 4 > 0xffff).
    for (const [id, longest] of [
      ['fits', 'x'.repeat(5000)],
      ['numbers', 'y'.repeat(20_000)],
    ] as const) {
      await store.create(id, 'f');
      const all: JournalEvent[] = [];
      for (let seq = 1; seq <= 70; seq++) {
        const data = seq === 40 ? longest : texts[seq % texts.length]!;
        all.push({ seq, kind: kinds[seq % kinds.length]!, data });
      }
      store.append(id, all, bytesOf(all));
      store.finish(id, 'done'); // 70 events: two full blocks and a short last one
      for (let after = 0; after <= all.length + 1; after++) {
        expect(await store.read(id, after)).toEqual(all.filter((e) => e.seq > after));
      }
      const more = events(71, 40, 'more');
      expect(store.append(id, more, bytesOf(more))).toBe(true);
      for (const after of [0, 63, 64, 70, 95, 109]) {
        expect(await store.read(id, after)).toEqual([...all, ...more].filter((e) => e.seq > after));
      }
    }
  });

  it('a finished stream is kept for its TTL in about what its events need', async () => {
    const { heapAfterGc } = await import('../helpers/heap');
    store = new MemoryJournalStore({ ttlMs: 60_000, maxBytesPerStream: 1e9, maxBytesTotal: 1e9 });
    const STREAMS = 2000;
    const TOKENS = 200;
    const before = await heapAfterGc();
    for (let i = 0; i < STREAMS; i++) {
      const id = `s${i}`;
      await store.create(id, 'f');
      for (let seq = 1; seq <= TOKENS; seq++) {
        const ev = { seq, kind: 'content' as const, data: ` tok${seq % 100}`.slice(0) };
        store.append(id, [ev], ev.data.length + 16);
      }
      store.finish(id, 'done');
    }
    const perStream = ((await heapAfterGc()) - before) / STREAMS;
    console.log(`memory journal: ${Math.round(perStream)} B per finished ${TOKENS}-token stream`);
    // Measured on Node 20 (2026-11-30): 1,978 B compacted at the finish, 3,911 B as the arrays
    // were left (their room to grow, and the last texts one string each).
    expect(perStream).toBeLessThan(2600);
    expect((await store.read(`s${STREAMS - 1}`, TOKENS - 1))[0]).toEqual({
      seq: TOKENS,
      kind: 'content',
      data: ' tok0',
    });
  });

  it('holds a long answer in a few bytes per token, not a string and slots each', async () => {
    const { heapAfterGc } = await import('../helpers/heap');
    store = new MemoryJournalStore({ ttlMs: 60_000, maxBytesPerStream: 1e9, maxBytesTotal: 1e9 });
    await store.create('L', 'f');
    const N = 50_000;
    const before = await heapAfterGc();
    for (let seq = 1; seq <= N; seq++) {
      // A fresh string per token, as the decoder makes them.
      const ev = { seq, kind: 'content' as const, data: ` tok${seq % 1000}`.slice(0) };
      store.append('L', [ev], ev.data.length + 16);
    }
    const perToken = ((await heapAfterGc()) - before) / N;
    // Its characters (7 here) and a number: about 12 B; a string of its own and two array
    // slots were 40-50 B.
    expect(perToken).toBeLessThan(24);
    expect((await store.read('L', N - 1))[0]).toEqual({ seq: N, kind: 'content', data: ' tok0' });
  });
});
