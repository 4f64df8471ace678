// Two server processes sharing one redis-server: a stream started on A resumes on B, mid-stream,
// with no text lost or doubled and one upstream generation.

import { simulateAnswer } from '../../src/simulator/answer';
import { startSimulator, type Simulator } from '../../src/simulator/server';
import { startServerProcess, type ServerProc } from '../helpers/proc';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { parseSse, q, request, sseText, TEST_KEY } from '../helpers/stack';

describeWithRedis('resume across processes through Redis', () => {
  let redis: RedisServer;
  let sim: Simulator;
  let a: ServerProc;
  let b: ServerProc;
  beforeAll(async () => {
    redis = await startRedis();
    sim = await startSimulator();
    const env = {
      PORT: '0',
      HOST: '127.0.0.1',
      DEEPSEEK_API_KEY: TEST_KEY,
      DEEPSEEK_BASE_URL: sim.url,
      REDIS_URL: redis.url,
      RESUME_GRACE_MS: '3000',
      LOG_LEVEL: 'info',
    };
    a = startServerProcess(env);
    b = startServerProcess(env);
    await Promise.all([a.ready(), b.ready()]);
  }, 40_000);
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await sim?.close();
    await redis?.stop();
  });

  it('SSE: start on A, drop mid-stream, resume on B with Last-Event-ID', async () => {
    const prompt = 'two hosts sse [[tokens=80 delay=10]]';
    const first = await request(a.url() + q(prompt, '&format=sse&thinking=false'), {
      headers: { 'x-request-id': 'xhost-sse' },
      onChunk: (_c, soFar) =>
        parseSse(soFar.slice(0, soFar.lastIndexOf('\n\n') + 2)).events.length >= 10
          ? 'abort'
          : undefined,
    });
    const before = parseSse(first.body.slice(0, first.body.lastIndexOf('\n\n') + 2)).events;
    const second = await request(b.url() + q(prompt, '&format=sse&thinking=false'), {
      headers: { 'last-event-id': before.at(-1)!.id! },
    });
    expect(second.status).toBe(200);
    const after = parseSse(second.body).events;
    expect(after.at(-1)!.event).toBe('done');
    expect(sseText(before) + sseText(after)).toBe(simulateAnswer(prompt).text);
    expect(sim.requests.filter((r) => r.body.messages?.[0]?.content === prompt)).toHaveLength(1);
  }, 30_000);

  it('text: start on A, drop, resume on B with Range; idempotent replay on B', async () => {
    const prompt = 'two hosts text [[tokens=60 delay=10]]';
    const first = await request(a.url() + q(prompt, '&thinking=false'), {
      headers: { 'x-request-id': 'xhost-text' },
      onChunk: (_c, soFar) => (soFar.length >= 30 ? 'abort' : undefined),
    });
    const got = Buffer.concat(first.chunks);
    const rest = await request(b.url() + q(prompt, '&thinking=false'), {
      headers: { 'x-request-id': 'xhost-text', range: `bytes=${got.length}-` },
    });
    expect(rest.status).toBe(206);
    expect(Buffer.concat([got, ...rest.chunks]).toString('utf8')).toBe(simulateAnswer(prompt).text);
    const replay = await request(b.url() + q(prompt, '&thinking=false'), {
      headers: { 'x-request-id': 'xhost-text' },
    });
    expect(replay.body).toBe(simulateAnswer(prompt).text);
    expect(sim.requests.filter((r) => r.body.messages?.[0]?.content === prompt)).toHaveLength(1);
  }, 30_000);
});
