// Two server processes sharing one redis-server: a stream started on A resumes on B, mid-stream,
// with no text lost or doubled and one upstream generation.

import Redis from 'ioredis';
import { simulateAnswer } from '../../src/simulator/answer';
import { startSimulator, type Simulator } from '../../src/simulator/server';
import { startServerProcess, type ServerProc } from '../helpers/proc';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { parseSse, q, request, sseText, TEST_KEY, waitFor } from '../helpers/stack';

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

describeWithRedis('a worker that shuts down mid-answer hands its streams over', () => {
  let redis: RedisServer;
  let sim: Simulator;
  let a: ServerProc | undefined;
  let b: ServerProc | undefined;
  beforeAll(async () => {
    redis = await startRedis();
    sim = await startSimulator();
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await sim?.close();
    await redis?.stop();
  });

  const env = () => ({
    PORT: '0',
    HOST: '127.0.0.1',
    DEEPSEEK_API_KEY: TEST_KEY,
    DEEPSEEK_BASE_URL: sim.url,
    REDIS_URL: redis.url,
    SHUTDOWN_GRACE_MS: '300',
    LOG_LEVEL: 'info',
  });

  it('the hand-over reaches a Redis that is slow to answer before the worker exits', async () => {
    a = startServerProcess(env());
    await a.ready();
    const admin = new Redis(redis.url);
    try {
      const prompt = 'slow redis handoff [[tokens=200 delay=15]]';
      let seen = 0;
      const sse = request(a.url() + q(prompt, '&format=sse&thinking=false'), {
        headers: { 'x-request-id': 'handoff-slow-redis' },
        onChunk: (_c, soFar) => void (seen = soFar.length),
      });
      await waitFor(() => seen > 500, 10_000, 'stream under way');
      a.child.kill('SIGTERM');
      // Redis answers nobody for 1 s from just before the hand-over (after the 300 ms grace)
      // until after the worker would have exited had it not waited for the journal.
      await new Promise((r) => setTimeout(r, 100));
      await admin.call('CLIENT', 'PAUSE', '1000');
      await sse;
      expect(await a.exit).toBe(0);
      expect(await admin.hget('dsp:m:handoff-slow-redis', 'state')).toBe('handoff');
    } finally {
      admin.disconnect();
    }
  }, 30_000);

  it('SSE and text streams cut by SIGTERM on A finish exactly on B, with one generation each', async () => {
    a = startServerProcess(env());
    b = startServerProcess(env());
    await Promise.all([a.ready(), b.ready()]);
    const ssePrompt = 'handoff sse [[tokens=120 delay=15]]';
    const textPrompt = 'handoff text [[tokens=120 delay=15]]';
    let sseSeen = 0;
    let textSeen = 0;
    const sse = request(a.url() + q(ssePrompt, '&format=sse&thinking=false'), {
      headers: { 'x-request-id': 'handoff-sse' },
      onChunk: (_c, soFar) => void (sseSeen = soFar.length),
    });
    const text = request(a.url() + q(textPrompt, '&thinking=false'), {
      headers: { 'x-request-id': 'handoff-text' },
      onChunk: (_c, soFar) => void (textSeen = soFar.length),
    });
    await waitFor(() => sseSeen > 500 && textSeen > 40, 10_000, 'streams under way');
    a.child.kill('SIGTERM');
    const bUrl = b.url();
    const [s1, t1] = await Promise.all([sse, text]);
    expect(await a.exit).toBe(0);

    // SSE: cut without a terminal event; reconnect to B as EventSource would.
    const before = parseSse(s1.body.slice(0, s1.body.lastIndexOf('\n\n') + 2)).events;
    expect(before.some((e) => e.event === 'done' || e.event === 'error')).toBe(false);
    const s2 = await request(bUrl + q(ssePrompt, '&format=sse&thinking=false'), {
      headers: { 'last-event-id': before.at(-1)!.id! },
    });
    const after = parseSse(s2.body).events;
    expect(after.at(-1)!.event).toBe('done');
    expect(sseText(before) + sseText(after)).toBe(simulateAnswer(ssePrompt).text);

    // Text: the body was cut; resume on B with Range.
    expect(t1.complete).toBe(false);
    const got = Buffer.concat(t1.chunks);
    const t2 = await request(bUrl + q(textPrompt, '&thinking=false'), {
      headers: { 'x-request-id': 'handoff-text', range: `bytes=${got.length}-` },
    });
    expect(t2.status).toBe(206);
    expect(Buffer.concat([got, ...t2.chunks]).toString('utf8')).toBe(
      simulateAnswer(textPrompt).text,
    );

    for (const prompt of [ssePrompt, textPrompt]) {
      const upstream = sim.requests.filter((r) => r.body.messages?.[0]?.content === prompt);
      expect(upstream.map((r) => r.path)).toEqual(['/chat/completions', '/beta/chat/completions']);
    }
  }, 60_000);
});
