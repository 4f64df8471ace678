// Resume edge cases found by an adversarial review of the journal and the resume paths: a
// resume must never hang on a stream that can no longer be resumed, never make a truncated
// answer look complete, and never answer a byte offset with anything but the text's bytes.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createApp } from '../../src/app';
import { testConfig } from '../../src/config';
import { MemoryJournalStore } from '../../src/journal/memory-store';
import { createLogger } from '../../src/log';
import type { JournalEvent, JournalStore } from '../../src/journal/types';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { parseSse, q, request, sseText, startStack, type Stack } from '../helpers/stack';
import { simulateAnswer } from '../../src/simulator/answer';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({
    resumeGraceMs: 300,
    sseRetryMs: 100,
    // About 55 simulator tokens: a long answer outgrows it a fraction of the way in.
    journalMaxBytesPerStream: 3000,
  });
});
afterAll(() => stack.close());

const ev = (seq: number, data = `t${seq}`): JournalEvent => ({ seq, kind: 'content', data });

/**
 * Start a 400-token answer (about 4 s) with id `id` on a stack whose per-stream budget runs out
 * about 0.6 s in, follow it from the start, and check what the follower got: the events in order,
 * ending with stream_expired. `originalDone` is read when the follower ended.
 */
async function followPastBudget(on: Stack, id: string) {
  let done = false;
  const original = request(
    on.url + q(`${id} [[tokens=400 delay=10]]`, '&format=sse&thinking=false'),
    {
      headers: { 'x-request-id': id },
    },
  ).then((r) => {
    done = true;
    return r;
  });
  await new Promise((r) => setTimeout(r, 100));
  const follower = await request(on.url + '/chat-stream', {
    headers: { 'last-event-id': `${id}:0` },
  });
  const originalDone = done;
  const events = parseSse(follower.body).events;
  expect(events.at(-1)!.event).toBe('error');
  expect(JSON.parse(events.at(-1)!.data).code).toBe('stream_expired');
  events.forEach((e, i) => expect(e.id).toBe(`${id}:${i + 1}`));
  return { follower, events, originalDone, original };
}

describe('a stream that outgrows its journal budget', () => {
  it('ends its followers at once (memory store)', async () => {
    const store = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 1000,
      maxBytesTotal: 100_000,
    });
    try {
      await store.create('s', 'fp');
      expect(store.append('s', [ev(1)], 600)).toBe(true);
      const got: number[] = [];
      let ended = false;
      store.subscribe('s', 0, { event: (e) => got.push(e.seq), end: () => (ended = true) });
      expect(store.append('s', [ev(2)], 600)).toBe(false);
      // Nothing more will ever reach the journal: a follower must not wait for the stream's end.
      expect(ended).toBe(true);
      expect(got).toEqual([1]);
      expect(await store.followers('s')).toBe(0);
    } finally {
      await store.shutdown();
    }
  });

  it('a reader following it live is told stream_expired then, not when the answer ends', async () => {
    const { follower, events, originalDone, original } = await followPastBudget(
      stack,
      'ovf-follow',
    );
    expect(originalDone).toBe(false);
    expect(follower.status).toBe(200);
    const again = await request(stack.url + '/chat-stream', {
      headers: { 'last-event-id': events.at(-1)!.id! },
    });
    expect(again.status).toBe(410);
    expect(parseSse((await original).body).events.at(-1)!.event).toBe('done');
  }, 15_000);
});

describeWithRedis('a stream that outgrows its Redis journal budget', () => {
  let redis: RedisServer;
  let rstack: Stack;
  beforeAll(async () => {
    redis = await startRedis();
    rstack = await startStack({
      redisUrl: redis.url,
      resumeGraceMs: 300,
      sseRetryMs: 100,
      journalMaxBytesPerStream: 3000,
    });
  }, 20_000);
  afterAll(async () => {
    await rstack?.close();
    await redis?.stop();
  });

  it('ends a reader following it live then, not when the answer ends', async () => {
    const { events, originalDone, original } = await followPastBudget(rstack, 'ovf-follow-redis');
    expect(originalDone).toBe(false);
    expect(events.length).toBeGreaterThan(1);
    expect(parseSse((await original).body).events.at(-1)!.event).toBe('done');
  }, 15_000);
});

describe('SSE resume of an abandoned stream', () => {
  it('at its last event is an error event, not a 204 that makes the cut answer look done', async () => {
    // The client leaves after 5 tokens, during an upstream pause longer than the grace: the
    // upstream is stopped with nothing journaled after what the client already has.
    const prompt = 'abandoned at the last event [[tokens=20 stall-after=5 stall=3000]]';
    let lastId = '';
    await request(stack.url + q(prompt, '&format=sse&thinking=false'), {
      headers: { 'x-request-id': 'abandon-last' },
      onChunk: (_c, soFar) => {
        const events = parseSse(soFar.slice(0, soFar.lastIndexOf('\n\n') + 2)).events;
        if (events.length < 5) return undefined;
        lastId = events.at(-1)!.id!;
        return 'abort';
      },
    });
    expect(lastId).toBe('abandon-last:5');
    await new Promise((r) => setTimeout(r, 1000));
    const meta = await stack.app.journal.meta('abandon-last');
    expect(meta).toMatchObject({ state: 'failed', lastSeq: 5 });

    const res = await request(stack.url + '/chat-stream', { headers: { 'last-event-id': lastId } });
    expect(res.status).toBe(200);
    const events = parseSse(res.body).events;
    expect(events).toHaveLength(1);
    expect(events[0]!.event).toBe('error');
    expect(events[0]!.id).toBe('abandon-last:6');
    expect(JSON.parse(events[0]!.data).code).toBe('stream_expired');
    // EventSource reconnects with that id: now everything was delivered, and it stops.
    const next = await request(stack.url + '/chat-stream', {
      headers: { 'last-event-id': events[0]!.id! },
    });
    expect(next.status).toBe(204);
  }, 15_000);

  it('a stream that ended with its own error event is still 204 after it', async () => {
    const prompt = 'ends in band [[tokens=10 reset=3]]';
    const first = await request(stack.url + q(prompt, '&format=sse&thinking=false'), {
      headers: { 'x-request-id': 'ends-in-band' },
    });
    const last = parseSse(first.body).events.at(-1)!;
    expect(['done', 'error']).toContain(last.event);
    const res = await request(stack.url + '/chat-stream', {
      headers: { 'last-event-id': last.id! },
    });
    expect(res.status).toBe(204);
  });
});

describe('text resume (Range / X-Resume-At)', () => {
  it('asked with format=sse is refused, not a 206 SSE body with events dropped', async () => {
    const prompt = 'sse with a range';
    const whole = await request(stack.url + q(prompt, '&format=sse'), {
      headers: { 'x-request-id': 'sse-range' },
    });
    expect(whole.status).toBe(200);
    const headers: Record<string, string>[] = [{ range: 'bytes=3-' }, { 'x-resume-at': '3' }];
    for (const header of headers) {
      const res = await request(stack.url + q(prompt, '&format=sse'), {
        headers: { 'x-request-id': 'sse-range', ...header },
      });
      expect(res.status).toBe(400);
      expect(JSON.parse(res.body).error.code).toBe('invalid_request');
    }
    // The same request in text mode resumes as usual.
    const text = await request(stack.url + q(prompt), {
      headers: { 'x-request-id': 'sse-range', range: 'bytes=3-' },
    });
    expect(text.status).toBe(206);
  });
});

describe('memory journal eviction', () => {
  it('over the total budget, drops finished streams before an older live one', async () => {
    const store = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 10_000,
      maxBytesTotal: 1_000,
    });
    try {
      await store.create('live-old', 'fp');
      expect(store.append('live-old', [ev(1)], 400)).toBe(true);
      await store.create('done-newer', 'fp');
      expect(store.append('done-newer', [ev(1)], 400)).toBe(true);
      store.finish('done-newer', 'done');
      await store.create('writing', 'fp');
      expect(store.append('writing', [ev(1)], 400)).toBe(true); // 1,200 bytes: one must go
      expect(await store.meta('done-newer')).toBeUndefined();
      expect((await store.meta('live-old'))?.state).toBe('live');
      expect(await store.read('live-old', 0)).toHaveLength(1);
    } finally {
      await store.shutdown();
    }
  });
});

describe('memory journal bounds', () => {
  it('keeps no copy of a request body (nothing in-process reads it, and no budget counts it)', async () => {
    const store = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 1000,
      maxBytesTotal: 100_000,
    });
    try {
      const body = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(100_000) }] });
      // As the app calls it: through the interface, with the body a shared journal would keep.
      const journal: JournalStore = store;
      await journal.create('big', 'fp', body);
      store.append('big', [ev(1)], 50);
      expect(store.bytes).toBe(50);
      expect((await store.meta('big'))?.request?.length ?? 0).toBe(0);
    } finally {
      await store.shutdown();
    }
  });
});

describe('a replay that joins a stream which then fails before it began', () => {
  it('gets a JSON error, not a 200 whose error event carries an id of the next stream', async () => {
    const stack = await startStack({ resumeGraceMs: 2000, sseRetryMs: 100 });
    try {
      // Only the first request with this prompt fails (401 after 600 ms); a retry succeeds.
      const prompt = 'joins then fails [[stall-headers=600 status=401 times=1]]';
      const url = stack.url + q(prompt, '&format=sse&thinking=false');
      const first = request(url, { headers: { 'x-request-id': 'joined-fail' } });
      await new Promise((r) => setTimeout(r, 200));
      // A second tab (or an idempotent retry) joins while the first waits for its upstream.
      const joined = await request(url, { headers: { 'x-request-id': 'joined-fail' } });
      expect((await first).status).toBe(502);
      expect(joined.status).toBe(410);
      expect(JSON.parse(joined.body).error.code).toBe('stream_expired');
      // The id was forgotten: a retry starts afresh and gets the whole answer.
      const retry = await request(url, { headers: { 'x-request-id': 'joined-fail' } });
      expect(sseText(parseSse(retry.body).events)).toBe(simulateAnswer(prompt).text);
    } finally {
      await stack.close();
    }
  }, 20_000);
});

describe('a replay that joins a stream which fails before it began, after the replay’s head', () => {
  it('ends with an error event whose id is the one it had, so a reconnect skips nothing', async () => {
    const stack = await startStack({ resumeGraceMs: 2000, heartbeatMs: 300 });
    try {
      const prompt = 'fails late before open [[stall-headers=1500 status=400]]';
      const url = stack.url + q(prompt, '&format=sse&thinking=false');
      const first = request(url, { headers: { 'x-request-id': 'late-fail' } });
      await new Promise((r) => setTimeout(r, 200));
      const joined = await request(url, { headers: { 'x-request-id': 'late-fail' } });
      expect((await first).status).toBe(400);
      expect(joined.status).toBe(200); // its head went out after heartbeatMs
      const last = parseSse(joined.body).events.at(-1)!;
      expect(last.event).toBe('error');
      expect(JSON.parse(last.data).code).toBe('stream_expired');
      // Not late-fail:1: that may be the first event of a retry's stream under the same id.
      expect(last.id).toBe('late-fail:0');
    } finally {
      await stack.close();
    }
  }, 20_000);
});

describe('a follow that ends while another worker takes the stream over', () => {
  it('sends the client back (no final event) instead of stream_expired with the takeover’s ids', async () => {
    // What a Redis follower sees in the race: its subscription ends (the stream was handed
    // off), and by the time it reads the stream's state, another worker has taken it over.
    const inner = new MemoryJournalStore({
      ttlMs: 60_000,
      maxBytesPerStream: 100_000,
      maxBytesTotal: 1_000_000,
    });
    await inner.create('taken', 'fp');
    inner.append('taken', [ev(1), ev(2), ev(3)], 60);
    const journal = Object.assign(Object.create(inner) as MemoryJournalStore, {
      subscribe(id: string, after: number, h: { event(e: JournalEvent): void; end(): void }) {
        void inner.read(id, after).then((evs) => {
          for (const e of evs) h.event(e);
          h.end();
        });
        return { close() {} };
      },
    }) as JournalStore;
    const app = createApp(testConfig({ useSimulator: false, deepseekApiKey: 'sk-test' }), {
      journal,
      logger: createLogger('silent'),
    });
    const server = http.createServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const { port } = server.address() as AddressInfo;
      const res = await request(`http://127.0.0.1:${port}/chat-stream`, {
        headers: { 'last-event-id': 'taken:1' },
      });
      expect(res.status).toBe(200);
      const events = parseSse(res.body).events;
      expect(events.map((e) => e.id)).toEqual(['taken:2', 'taken:3']);
      expect(events.some((e) => e.event === 'error')).toBe(false);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await app.close();
      await inner.shutdown();
    }
  });
});
