// The per-client stream cap, in the cases a review found broken: a client at its cap coming back
// for its own stream (a resume or a replay starts no upstream work), requests that are not
// streams, and the Redis counter when its key is lost while a slot is held.

import Redis from 'ioredis';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { parseSse, q, request, sseText, startStack, waitFor, type Stack } from '../helpers/stack';
import { simulateAnswer } from '../../src/simulator/answer';

const PROMPT = 'capped and resumed [[tokens=60 delay=20]]';

describe('a client at its stream cap (MAX_STREAMS_PER_CLIENT=1)', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ maxStreamsPerClient: 1, resumeGraceMs: 5000 });
  });
  afterAll(() => stack.close());

  /** An SSE stream the client leaves after `events` events; its last event id. */
  const leaveAfter = async (events: number, headers: Record<string, string> = {}) => {
    let lastId = '';
    await request(stack.url + q(PROMPT, '&format=sse&thinking=false'), {
      headers,
      onChunk: (_c, soFar) => {
        const ids = [...soFar.matchAll(/^id: (.*)$/gm)].map((m) => m[1]!);
        lastId = ids.at(-1) ?? '';
        return ids.length > events ? 'abort' : undefined;
      },
    });
    return lastId;
  };

  it('can resume the stream it left (Last-Event-ID) while that stream holds the slot', async () => {
    const lastId = await leaveAfter(5);
    // The stream goes on for the resume grace, holding the client's only slot: a new stream is
    // refused...
    const other = await request(stack.url + q('another stream'));
    expect(other.status).toBe(429);
    // ...but coming back for this one starts nothing upstream, and is served.
    const again = await request(stack.url + '/chat-stream?format=sse', {
      headers: { 'last-event-id': lastId, accept: 'text/event-stream' },
    });
    expect(again.status).toBe(200);
    const events = parseSse(again.body).events;
    expect(events.at(-1)!.event).toBe('done');
    expect(simulateAnswer(PROMPT).text.endsWith(sseText(events))).toBe(true);
  }, 20_000);

  it('a new X-Request-ID is still refused, and the stream it left is replayed by its own', async () => {
    const id = `capped-replay-${Date.now()}`;
    await leaveAfter(3, { 'x-request-id': id });
    const before =
      await stack.app.metrics.registry.getSingleMetricAsString('dsp_rate_limited_total');
    const fresh = await request(stack.url + q(PROMPT, '&format=sse&thinking=false'), {
      headers: { 'x-request-id': `${id}-new` },
    });
    expect(fresh.status).toBe(429);
    expect(JSON.parse(fresh.body).error.code).toBe('rate_limited');
    const replay = await request(stack.url + q(PROMPT, '&format=sse&thinking=false'), {
      headers: { 'x-request-id': id },
    });
    expect(replay.status).toBe(200);
    expect(sseText(parseSse(replay.body).events)).toBe(simulateAnswer(PROMPT).text);
    // The refusal is counted once; the replay is not a refusal.
    const after =
      await stack.app.metrics.registry.getSingleMetricAsString('dsp_rate_limited_total');
    const streams = (text: string) =>
      Number(/dsp_rate_limited_total\{limit="streams"\} (\d+)/.exec(text)?.[1] ?? 0);
    expect(streams(after) - streams(before)).toBe(1);
  }, 20_000);

  it('a batch is refused at the cap whatever resume headers it carries', async () => {
    let started = false;
    const open = request(stack.url + q('holds the slot too [[tokens=40 delay=20]]'), {
      onChunk: () => void (started = true),
    });
    await waitFor(() => started, 5000, 'stream open');
    const variants: Record<string, string>[] = [
      { 'x-request-id': 'batch-at-cap' },
      { 'last-event-id': 'x:1' },
    ];
    for (const headers of variants) {
      const res = await request(stack.url + '/Chat-Stream/batch/', {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ prompts: ['one more'] }),
      });
      expect(res.status).toBe(429);
    }
    await open;
  }, 20_000);

  it('is not refused requests that are not streams (GET /v1/models, a 405)', async () => {
    let started = false;
    const open = request(stack.url + q('holds the slot [[tokens=40 delay=20]]'), {
      onChunk: () => void (started = true),
    });
    await waitFor(() => started, 5000, 'stream open');
    expect((await request(stack.url + '/v1/models')).status).toBe(200);
    expect((await request(stack.url + '/v1/chat/completions')).status).toBe(405);
    expect((await request(stack.url + q('third'))).status).toBe(429);
    await open;
  }, 20_000);
});

describeWithRedis('stream slots in Redis when the counter key is lost', () => {
  let redis: RedisServer;
  let admin: Redis;
  let stack: Stack;
  beforeAll(async () => {
    redis = await startRedis();
    admin = new Redis(redis.url);
    stack = await startStack({ redisUrl: redis.url, maxStreamsPerClient: 1 });
  }, 20_000);
  afterAll(async () => {
    await stack?.close();
    admin?.disconnect();
    await redis?.stop();
  });

  it('never goes below zero, so the cap still holds afterwards', async () => {
    let started = false;
    const open = request(stack.url + q('slot then flush [[tokens=20 delay=20]]'), {
      onChunk: () => void (started = true),
    });
    await waitFor(() => started, 5000, 'stream open');
    await admin.flushall(); // a Redis restart without persistence, eviction, failover
    await open;
    // The release is fire-and-forget: give it a moment, then look at the counter.
    let keys = await admin.keys('dsp:streams:*');
    for (let i = 0; i < 50 && keys.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      keys = await admin.keys('dsp:streams:*');
    }
    expect(keys).toEqual([]);
    const statuses = await Promise.all(
      [1, 2, 3].map((i) =>
        request(stack.url + q(`after the flush ${i} [[tokens=20 delay=20]]`)).then((r) => r.status),
      ),
    );
    expect(statuses.sort()).toEqual([200, 429, 429]);
  }, 20_000);
});
