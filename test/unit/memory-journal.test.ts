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
});
