// Races with the awaits in front of a stream (the stream cap's and the journal's Redis round
// trips): a client that leaves, or a drain that begins, while a request waits there.

import http from 'node:http';
import { describeWithRedis, redisForSuite } from '../helpers/redis';
import { request, startStack, type Stack } from '../helpers/stack';

describeWithRedis('stream slots from a slow Redis', () => {
  const redis = redisForSuite();
  let stack: Stack;
  beforeEach(async () => {
    stack = await startStack({ redisUrl: redis.url, maxStreamsPerClient: 16 });
    await redis.admin.flushall();
    // Redis reachable from the proxy before the test pauses it.
    expect((await request(stack.url + '/readyz')).status).toBe(200);
  });
  afterEach(async () => {
    await stack.close();
  });

  /** Redis answers nobody for `ms` (CLIENT PAUSE): every guard's command waits that long. */
  /** The proxy again with other guards on (the same Redis), once it reaches Redis. */
  const restartWith = async (overrides: Parameters<typeof startStack>[0]) => {
    await stack.close();
    stack = await startStack({ redisUrl: redis.url, ...overrides });
    expect((await request(stack.url + '/readyz')).status).toBe(200);
  };

  const pauseRedis = (ms: number) => redis.admin.call('CLIENT', 'PAUSE', String(ms));

  const upstreamCalls = (tag: string) =>
    stack.sim.requests.filter((r) => String(r.body.messages?.[0]?.content).includes(tag)).length;

  /** The per-client stream counters in Redis: all back at zero once nothing runs. */
  const slotCounts = async () => {
    const keys = await redis.admin.keys('dsp:streams:*');
    return Promise.all(keys.map(async (k) => Number(await redis.admin.get(k))));
  };

  /**
   * POST `body` to `path` and hang up 200 ms later, while Redis answers nobody (600 ms), so the
   * guards in front of the route are still waiting; return once the route has run (1200 ms).
   */
  const leaveDuringRedisWait = async (path: string, body: object) => {
    await pauseRedis(600);
    const req = http.request(stack.url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      agent: false,
    });
    req.on('error', () => undefined);
    req.end(JSON.stringify(body));
    await new Promise((r) => setTimeout(r, 200));
    req.destroy(); // gone while a guard waits for Redis
    await new Promise((r) => setTimeout(r, 1200));
  };

  it.each([
    ['/chat-stream', { prompt: 'gone v [[tokens=300 delay=20]]', thinking: false }],
    [
      '/v1/chat/completions',
      {
        model: 'deepseek-chat',
        stream: true,
        messages: [{ role: 'user', content: 'gone v [[tokens=300 delay=20]]' }],
      },
    ],
  ])(
    'a client that leaves %s while its stream slot is taken starts nothing and keeps no slot',
    async (path, body) => {
      await leaveDuringRedisWait(path, body);
      expect(stack.app.service.active.size).toBe(0);
      expect(upstreamCalls('gone v')).toBe(0);
      // The slot taken for nobody went back: the client may open its full quota again.
      expect((await slotCounts()).filter((n) => n !== 0)).toEqual([]);
    },
    20_000,
  );

  it('a client gone while the request rate limit waited takes no stream slot', async () => {
    // Both guards on: the rate limit waits on Redis first; the stream cap runs after the client
    // left, its 'close' already fired.
    await restartWith({ maxStreamsPerClient: 16, rateLimitMax: 1000 });
    await leaveDuringRedisWait('/chat-stream', {
      prompt: 'gone r [[tokens=300 delay=20]]',
      thinking: false,
    });
    expect(upstreamCalls('gone r')).toBe(0);
    expect((await slotCounts()).filter((n) => n !== 0)).toEqual([]);
  }, 20_000);

  it('a Redis that refuses writes (memory full) is 503 store_unavailable, not a 500', async () => {
    await restartWith({ maxStreamsPerClient: 16, rateLimitMax: 1000 });
    await redis.admin.config('SET', 'maxmemory-policy', 'noeviction');
    await redis.admin.config('SET', 'maxmemory', '1');
    try {
      const res = await request(stack.url + '/chat-stream?prompt=oom&thinking=false');
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body).error.code).toBe('store_unavailable');
      expect(res.headers['retry-after']).toBe('1');
    } finally {
      await redis.admin.config('SET', 'maxmemory', '0');
    }
  }, 20_000);

  it.each([true, false])(
    '/v1 (stream: %s) gone while the request rate limit waited starts no upstream request',
    async (stream) => {
      // The per-client stream cap off: only the request rate limit waits on Redis.
      await restartWith({ rateLimitMax: 1000, maxStreamsPerClient: 0 });
      const tag = `left v1 ${stream ? 's' : 'j'}`;
      await leaveDuringRedisWait('/v1/chat/completions', {
        model: 'deepseek-chat',
        stream,
        messages: [{ role: 'user', content: `${tag} [[tokens=300 delay=20]]` }],
      });
      // Nobody reads this answer: nothing may be generating (and billed) for it.
      expect(stack.app.service.active.size).toBe(0);
      const calls = stack.sim.requests.filter((r) =>
        String(r.body.messages?.[0]?.content).includes(tag),
      );
      expect(calls.filter((r) => !r.done && !r.clientClosed)).toEqual([]);
    },
    20_000,
  );

  it('when the client leaves while the slots are taken, no prompt starts upstream', async () => {
    await leaveDuringRedisWait('/chat-stream/batch', {
      prompts: ['left early a [[tokens=300 delay=20]]', 'left early b [[tokens=300]]'],
      thinking: false,
    });
    // Nobody reads this batch: its prompts must not be generating (and billed) for 6 s.
    expect(stack.app.service.active.size).toBe(0);
    expect(upstreamCalls('left early')).toBe(0);
  }, 20_000);
});

describe('a batch and a drain that begins while it takes its stream slots', () => {
  it('is refused with 503 shutting_down, and no prompt starts upstream', async () => {
    const stack = await startStack({ maxStreamsPerClient: 16 });
    try {
      const service = stack.app.service;
      const admit = service.admit.bind(service);
      // SIGTERM lands while the batch awaits its extra slots (a Redis round trip in production):
      // the drain finds nothing active, so it is over at once and server.ts exits 100 ms later.
      // The first check passes; the drain begins while the batch awaits its extra slots.
      const spy = jest.spyOn(service, 'admit').mockImplementation((more = 0) => {
        admit(more);
        if (!service.draining) queueMicrotask(() => void service.drain(0));
      });
      const res = await request(stack.url + '/chat-stream/batch', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompts: ['drained a [[tokens=20]]', 'drained b [[tokens=20]]'] }),
      });
      spy.mockRestore();
      expect(service.draining).toBe(true);
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body).error.code).toBe('shutting_down');
      const calls = stack.sim.requests.filter((r) =>
        String(r.body.messages?.[0]?.content).includes('drained'),
      );
      expect(calls).toHaveLength(0);
    } finally {
      await stack.close();
    }
  });
});

describe('a /chat-stream request and a drain that begins while its journal entry is claimed', () => {
  it('is refused with 503 shutting_down, starts nothing, and a retry may reuse its id', async () => {
    const stack = await startStack();
    try {
      const service = stack.app.service;
      const admit = service.admit.bind(service);
      // SIGTERM lands while the route awaits journal.create() (a Redis round trip in
      // production): the drain finds nothing active and is over at once. The in-memory store
      // claims at once, with no wait to land in: here its claim comes as a promise, as Redis's.
      const journal = stack.app.journal;
      const create = journal.create.bind(journal);
      const claimSpy = jest
        .spyOn(journal, 'create')
        .mockImplementation((...args) => Promise.resolve(create(...args)));
      const spy = jest.spyOn(service, 'admit').mockImplementation((more = 0) => {
        admit(more);
        if (!service.draining) queueMicrotask(() => void service.drain(0));
      });
      const res = await request(stack.url + '/chat-stream', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': 'drained-1' },
        body: JSON.stringify({ prompt: 'drained c [[tokens=20]]', thinking: false }),
      });
      spy.mockRestore();
      claimSpy.mockRestore();
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body).error.code).toBe('shutting_down');
      expect(
        stack.sim.requests.filter((r) => String(r.body.messages?.[0]?.content).includes('drained')),
      ).toHaveLength(0);
      // The claim was forgotten: the id is free for the retry (on another worker).
      expect(await stack.app.journal.meta('drained-1')).toBeUndefined();
    } finally {
      await stack.close();
    }
  });
});
