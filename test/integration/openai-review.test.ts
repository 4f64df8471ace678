// /v1/chat/completions as real clients meet it, in the cases a review found broken: a client that
// leaves while the guards in front of the route wait on Redis, a prompt sent as an array of content
// parts, and the byte count of a non-stream answer in the log line.

import http from 'node:http';
import Redis from 'ioredis';
import { simulateAnswer } from '../../src/simulator/answer';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { request, startStack, type Stack } from '../helpers/stack';

describe('/v1 limits and accounting', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ maxPromptChars: 1000 });
  });
  afterAll(() => stack.close());

  const post = (body: object) =>
    request(`${stack.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  it('content given as an array of text parts counts toward MAX_PROMPT_CHARS', async () => {
    const tag = 'parts over the limit';
    const res = await post({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: tag },
            { type: 'text', text: 'x'.repeat(1000) },
          ],
        },
      ],
    });
    expect(res.status).toBe(413);
    expect(JSON.parse(res.body).error.code).toBe('payload_too_large');
    expect(JSON.stringify(stack.sim.requests.map((r) => r.body))).not.toContain(tag);
  });

  it('the log line of a non-stream answer counts its bytes, not its UTF-16 units', async () => {
    const prompt = 'bytes of a json answer';
    const res = await post({
      model: 'deepseek-chat',
      messages: [{ role: 'user', content: prompt }],
    });
    expect(res.status).toBe(200);
    // The simulator's answers mix in CJK and emoji: bytes and characters differ.
    const text = simulateAnswer(prompt).text;
    expect(Buffer.byteLength(text)).toBeGreaterThan(text.length);
    expect(JSON.parse(res.body).choices[0].message.content).toBe(text);
    const id = res.headers['x-request-id'] as string;
    await new Promise((r) => setTimeout(r, 50)); // the line is written as the stream ends
    const line = stack.logs.find((l) => l.includes(id) && l.includes('stream finished'))!;
    expect(JSON.parse(line).bytesOut).toBe(Buffer.byteLength(res.body));
  });
});

describeWithRedis('a /v1 client that leaves while the request rate limit waits on Redis', () => {
  let redis: RedisServer;
  let admin: Redis;
  let stack: Stack;
  beforeAll(async () => {
    redis = await startRedis();
    admin = new Redis(redis.url);
    // The per-client stream cap off: only the request rate limit waits on Redis.
    stack = await startStack({ redisUrl: redis.url, rateLimitMax: 1000, maxStreamsPerClient: 0 });
    expect((await request(stack.url + '/readyz')).status).toBe(200);
  }, 20_000);
  afterAll(async () => {
    await stack?.close();
    admin?.disconnect();
    await redis?.stop();
  });

  it.each([true, false])(
    'stream: %s starts no upstream request for nobody',
    async (stream) => {
      const tag = `left v1 ${stream ? 's' : 'j'}`;
      await admin.call('CLIENT', 'PAUSE', '600');
      const req = http.request(stack.url + '/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        agent: false,
      });
      req.on('error', () => undefined);
      req.end(
        JSON.stringify({
          model: 'deepseek-chat',
          stream,
          messages: [{ role: 'user', content: `${tag} [[tokens=300 delay=20]]` }],
        }),
      );
      await new Promise((r) => setTimeout(r, 200));
      req.destroy(); // gone while the rate limiter waits for Redis
      // Redis answers again at 600 ms; the route has run by 1200 ms.
      await new Promise((r) => setTimeout(r, 1200));
      const calls = stack.sim.requests.filter((r) =>
        String(r.body.messages?.[0]?.content).includes(tag),
      );
      // Nobody reads this answer: nothing may be generating (and billed) for it.
      expect(stack.app.service.active.size).toBe(0);
      expect(calls.filter((r) => !r.done && !r.clientClosed)).toEqual([]);
    },
    20_000,
  );
});
