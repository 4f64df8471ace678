// journal/memory-store.ts: the in-process journal. Bounded per stream and in total (finished
// streams are evicted before live ones, oldest first), finished streams swept for TTL on an
// unref()ed timer, shutdown() to stop it.
// Subscribers are called synchronously as events are appended.

import {
  type Claim,
  EVENT_OVERHEAD_BYTES,
  type JournalEvent,
  type JournalLimits,
  type JournalStore,
  type StreamMeta,
  type SubscribeHandlers,
  type Subscription,
} from './types';

/** create()'s answer for a new stream: one object for all of them. */
const CLAIMED: Claim = Object.freeze({ created: true as const });

// A stream's events are kept compactly: each one a number (its text's length and its kind) and
// its text, joined with its neighbours' BLOCK at a time. A token then costs about its characters
// and 4 B once its block is joined, where a string of its own and two array slots cost 40-50 B
// (measured): for a long answer, most of what a stream holds. Sequence numbers are contiguous, so
// seq = firstSeq + index.
interface Entry {
  /** Its lastSeq is not kept up to date: metaOf() reads it off the events. */
  meta: StreamMeta;
  /** seq of the first event; 0 until the first append. */
  firstSeq: number;
  /**
   * Per event: its text's length x 4 + its kind's code (KIND_CODE). Once the stream has finished,
   * the same numbers as a string's char codes when all fit (see compact()).
   */
  packed: number[] | string;
  /**
   * The texts of events [i x BLOCK, (i + 1) x BLOCK), joined. Once the stream has finished, the
   * last block may be short (compact()).
   */
  blocks: string[];
  /** The texts of the events after the last full block. */
  open: string[];
  bytes: number;
  /** When a stream that is no longer live may be dropped (set as it stops being live). */
  expiresAt: number;
  /**
   * Made by the first subscribe: most streams never have one, and an empty Set is about 190 B
   * (kept for the stream's length and its TTL after).
   */
  subscribers: Set<Sub> | undefined;
}

/** What a stream without followers iterates. */
const NO_SUBS: ReadonlySet<Sub> = new Set();

/** Events per joined block: joined on the append that fills one. */
const BLOCK = 32;
const KIND_CODE: Readonly<Record<JournalEvent['kind'], number>> = {
  content: 0,
  reasoning: 1,
  done: 2,
  error: 3,
};
const CODE_KIND: ReadonlyArray<JournalEvent['kind']> = ['content', 'reasoning', 'done', 'error'];

interface Sub {
  afterSeq: number;
  handlers: SubscribeHandlers;
  closed: boolean;
}

/** Evicted live streams remembered at most (see orphans). */
const MAX_ORPHANS = 10_000;

export class MemoryJournalStore implements JournalStore {
  readonly shared = false;
  /** Insertion order = age: eviction takes from the front. */
  private readonly streams = new Map<string, Entry>();
  private totalBytes = 0;
  private readonly sweeper: NodeJS.Timeout;
  /**
   * Live streams evicted to stay within the total budget, by id, with their fingerprint, until
   * their recorder ends them (finish or remove). Their generation still runs and writes by id: a
   * new stream under the same id (a retry with the same X-Request-ID) would get its events mixed
   * in. Until then, the id answers as a stream that is no longer available.
   */
  private readonly orphans = new Map<string, string>();

  constructor(private readonly limits: JournalLimits) {
    this.sweeper = setInterval(() => this.sweep(), Math.min(limits.ttlMs, 30_000));
    this.sweeper.unref();
  }

  get size(): number {
    return this.streams.size;
  }

  get bytes(): number {
    return this.totalBytes;
  }

  // No copy of the request body: only another process could continue a stream from it (this
  // journal is not shared, so nothing hands off), and no budget counts it: a 100 KB prompt with a
  // short answer was kept for the whole TTL at a charge of one event's bytes.
  create(id: string, fingerprint: string): Claim {
    const existing = this.live(id);
    if (existing) return { created: false as const, meta: metaOf(existing) };
    const orphan = this.orphanMeta(id);
    if (orphan) return { created: false as const, meta: orphan };
    this.streams.set(id, {
      meta: { id, fingerprint, state: 'live', lastSeq: 0, overflow: false },
      firstSeq: 0,
      packed: [],
      blocks: [],
      open: [],
      bytes: 0,
      expiresAt: Date.now() + this.limits.ttlMs,
      subscribers: undefined,
    });
    return CLAIMED;
  }

  async meta(id: string) {
    const e = this.live(id);
    return e ? metaOf(e) : this.orphanMeta(id);
  }

  private orphanMeta(id: string): StreamMeta | undefined {
    const fingerprint = this.orphans.get(id);
    if (fingerprint === undefined) return undefined;
    return { id, fingerprint, state: 'live', lastSeq: 0, overflow: true };
  }

  append(id: string, events: JournalEvent[], bytes: number): boolean {
    const e = this.streams.get(id);
    if (!e || e.meta.overflow) return false;
    if (e.bytes + bytes > this.limits.maxBytesPerStream) {
      // Over budget: keep nothing more; a resume could not be exact, so it will be refused.
      this.overflow(e);
      return false;
    }
    const first = events[0];
    if (first === undefined) return true;
    // Either form of packed has one entry per event.
    if (e.packed.length === 0) e.firstSeq = first.seq;
    if (first.seq !== e.firstSeq + e.packed.length) {
      // A gap would make a resume skip or repeat: refuse, as for a stream over budget.
      this.overflow(e);
      return false;
    }
    // Compacted at its finish (a string of codes, or a short last block): as before first. Not a
    // fast path: nothing appends to a finished stream but a caller of the store's own.
    if (typeof e.packed === 'string' || e.blocks.length * BLOCK > e.packed.length) expand(e);
    const packed = e.packed as number[];
    // A batch is numbered consecutively (the recorder numbers every event it appends).
    for (const ev of events) {
      packed.push(ev.data.length * 4 + KIND_CODE[ev.kind]);
      e.open.push(ev.data);
      if (e.open.length === BLOCK) {
        e.blocks.push(e.open.join(''));
        e.open.length = 0;
      }
    }
    e.bytes += bytes;
    this.totalBytes += bytes;
    // Nothing here for the TTL: a live stream never expires, and its TTL counts from when it
    // stops being live (finish, handoff), not from its last event. Nor for lastSeq (metaOf).
    if (e.subscribers !== undefined && e.subscribers.size > 0) this.notify(e.subscribers, events);
    if (this.totalBytes > this.limits.maxBytesTotal) this.evict(id);
    return true;
  }

  finish(id: string, state: 'done' | 'failed'): void {
    const e = this.streams.get(id);
    if (!e) {
      this.orphans.delete(id);
      return;
    }
    e.meta.state = state;
    e.expiresAt = Date.now() + this.limits.ttlMs;
    for (const s of e.subscribers ?? NO_SUBS) this.endSub(e, s);
    compact(e);
  }

  async read(id: string, afterSeq: number): Promise<JournalEvent[]> {
    const e = this.live(id);
    return e ? eventsAfter(e, afterSeq) : [];
  }

  handoff(id: string): void {
    const e = this.streams.get(id);
    if (e && e.meta.state === 'live') {
      e.meta.state = 'handoff';
      e.expiresAt = Date.now() + this.limits.ttlMs;
    }
  }

  async claim(id: string): Promise<boolean> {
    const e = this.streams.get(id);
    if (!e || e.meta.state !== 'handoff') return false;
    e.meta.state = 'live';
    return true;
  }

  remove(id: string): void {
    const e = this.streams.get(id);
    if (!e) {
      this.orphans.delete(id);
      return;
    }
    this.drop(id, e);
  }

  subscribe(id: string, afterSeq: number, handlers: SubscribeHandlers): Subscription {
    const sub: Sub = { afterSeq, handlers, closed: false };
    const e = this.live(id);
    if (!e) {
      handlers.end();
      return { close() {} };
    }
    // Replay what is stored, then stay subscribed for what comes next.
    for (const ev of eventsAfter(e, sub.afterSeq)) {
      sub.afterSeq = ev.seq;
      handlers.event(ev);
      if (sub.closed) return { close() {} };
    }
    if (e.meta.state !== 'live') {
      handlers.end();
      return { close() {} };
    }
    (e.subscribers ??= new Set()).add(sub);
    return {
      close: () => {
        sub.closed = true;
        e.subscribers?.delete(sub);
      },
    };
  }

  async followers(id: string): Promise<number> {
    return this.streams.get(id)?.subscribers?.size ?? 0;
  }

  async ping(): Promise<boolean> {
    return true;
  }

  async shutdown(): Promise<void> {
    clearInterval(this.sweeper);
    for (const e of this.streams.values()) {
      for (const s of e.subscribers ?? NO_SUBS) this.endSub(e, s);
    }
    this.streams.clear();
    this.orphans.clear();
    this.totalBytes = 0;
  }

  private notify(subscribers: Set<Sub>, events: JournalEvent[]): void {
    for (const s of subscribers) {
      for (const ev of events) {
        if (s.closed) break;
        if (ev.seq > s.afterSeq) {
          s.afterSeq = ev.seq;
          s.handlers.event(ev);
        }
      }
    }
  }

  /**
   * Nothing more will be journaled: its followers end now (they are told the stream expired)
   * instead of waiting, with no event, for an answer that may run for minutes yet.
   */
  private overflow(e: Entry): void {
    e.meta.overflow = true;
    for (const s of e.subscribers ?? NO_SUBS) this.endSub(e, s);
  }

  private endSub(e: Entry, s: Sub): void {
    e.subscribers?.delete(s);
    if (!s.closed) {
      s.closed = true;
      s.handlers.end();
    }
  }

  private live(id: string): Entry | undefined {
    const e = this.streams.get(id);
    if (e && e.meta.state !== 'live' && e.expiresAt <= Date.now()) {
      this.drop(id, e);
      return undefined;
    }
    return e;
  }

  /**
   * Finished streams first, oldest first; then live ones (a long answer still running, with its
   * readers, outranks replays of answers that are over), never the stream being written now.
   */
  private evict(keep: string): void {
    for (const [id, e] of this.streams) {
      if (this.totalBytes <= this.limits.maxBytesTotal) return;
      if (id !== keep && e.meta.state !== 'live') this.drop(id, e);
    }
    for (const [id, e] of this.streams) {
      if (this.totalBytes <= this.limits.maxBytesTotal) return;
      // A stream with nothing journaled yet (queued upstream) frees nothing: keep it.
      if (id !== keep && e.bytes > 0) {
        this.drop(id, e);
        this.orphans.set(id, e.meta.fingerprint);
        // Ids only, ended by their recorder; bounded all the same.
        if (this.orphans.size > MAX_ORPHANS) this.orphans.delete(this.orphans.keys().next().value!);
      }
    }
  }

  private drop(id: string, e: Entry): void {
    this.streams.delete(id);
    this.totalBytes -= e.bytes;
    for (const s of e.subscribers ?? NO_SUBS) this.endSub(e, s);
  }

  /**
   * Finished streams past their TTL. Never a live one: its recorder ends it (finish or remove),
   * and one that journaled nothing for RESUME_TTL_S (a long upstream queue) is still running: it
   * was dropped here, so a retry with its X-Request-ID started a second generation under the
   * same id. A live stream's bytes count toward the total budget, which evicts it if need be.
   */
  private sweep(): void {
    const now = Date.now();
    for (const [id, e] of this.streams) {
      if (e.expiresAt <= now && e.meta.state !== 'live') this.drop(id, e);
    }
  }
}

/** A copy of the entry's meta, with its lastSeq: the seq of its last event, 0 before any. */
function metaOf(e: Entry): StreamMeta {
  const n = e.packed.length;
  return { ...e.meta, lastSeq: n === 0 ? 0 : e.firstSeq + n - 1 };
}

/** Stored events after `afterSeq`, as objects again (replay: off the per-token path). */
function eventsAfter(e: Entry, afterSeq: number): JournalEvent[] {
  const out: JournalEvent[] = [];
  const n = e.packed.length;
  const from = Math.max(0, afterSeq - e.firstSeq + 1);
  // Whole blocks before `from` are skipped; within its block, offsets add up from the start.
  for (let b = Math.floor(from / BLOCK); b * BLOCK < n; b++) {
    const joined = b < e.blocks.length ? e.blocks[b] : undefined;
    let at = 0;
    for (let i = b * BLOCK; i < Math.min(n, (b + 1) * BLOCK); i++) {
      const p = typeof e.packed === 'string' ? e.packed.charCodeAt(i) : e.packed[i]!;
      const length = p >>> 2;
      if (i >= from) {
        const data = joined === undefined ? e.open[i - b * BLOCK]! : joined.slice(at, at + length);
        out.push({ seq: e.firstSeq + i, kind: CODE_KIND[p & 3]!, data });
      }
      at += length;
    }
  }
  return out;
}

/** The largest number compact() keeps as a char code (a 16-bit code unit). */
const MAX_CODE = 0xffff;
/** Arguments per String.fromCharCode call (well under the engine's limit on arguments). */
const CODES_PER_CALL = 8192;

/**
 * A finished stream is kept for its TTL as it is, read only: its events take what they need, not
 * the room their arrays kept to grow. The texts after the last full block become one short last
 * block, and the lengths and kinds a string of char codes when every one fits in 16 bits (one
 * byte each when every text is under 64 characters: a 200-token answer's 201 numbers in about 220 B,
 * where the array of them took about 1.7 KB). Tested in test/unit/memory-journal.test.ts.
 */
function compact(e: Entry): void {
  if (e.open.length > 0) {
    e.blocks.push(e.open.join(''));
    e.open = [];
  }
  const packed = e.packed;
  if (typeof packed === 'string') return;
  for (let i = 0; i < packed.length; i++) {
    if (packed[i]! > MAX_CODE) {
      e.packed = packed.slice(); // as numbers, without the room to grow
      return;
    }
  }
  let codes = '';
  for (let i = 0; i < packed.length; i += CODES_PER_CALL) {
    codes += String.fromCharCode(...packed.slice(i, i + CODES_PER_CALL));
  }
  e.packed = codes;
}

/** compact() undone: an append to a finished stream (the store allows it) goes on as before. */
function expand(e: Entry): void {
  const codes = e.packed;
  let packed: number[];
  if (typeof codes === 'string') {
    packed = [];
    for (let i = 0; i < codes.length; i++) packed.push(codes.charCodeAt(i));
    e.packed = packed;
  } else {
    packed = codes;
  }
  // A short last block goes back to being the open texts.
  const full = Math.floor(packed.length / BLOCK);
  if (e.blocks.length > full) {
    const joined = e.blocks.pop()!;
    let at = 0;
    for (let i = full * BLOCK; i < packed.length; i++) {
      const length = packed[i]! >>> 2;
      e.open.push(joined.slice(at, at + length));
      at += length;
    }
  }
}

export function eventBytes(ev: JournalEvent): number {
  return ev.data.length + EVENT_OVERHEAD_BYTES;
}
