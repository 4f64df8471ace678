// Two workers sharing one redis-server: the request limit and the per-client stream cap hold
// globally, so a burst split across workers is limited as one.

import { startSimulator, type Simulator } from '../../src/simulator/server';
import { startServerProcess, type ServerProc } from '../helpers/proc';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { q, request, TEST_KEY, waitFor } from '../helpers/stack';

describeWithRedis('limits across workers through Redis', () => {
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
      RATE_LIMIT_MAX: '6',
      RATE_LIMIT_WINDOW_MS: '5000',
      MAX_STREAMS_PER_CLIENT: '2',
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

  it('a burst split across two workers is limited as one', async () => {
    const urls = Array.from(
      { length: 10 },
      (_, i) => (i % 2 ? a.url() : b.url()) + q(`split burst ${i}`),
    );
    const statuses: number[] = [];
    for (const u of urls) statuses.push((await request(u)).status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(6);
    expect(statuses.filter((s) => s === 429)).toHaveLength(4);
    // Both workers refused some: the count is shared, not per process.
    expect(statuses.slice(6).every((s) => s === 429)).toBe(true);
  }, 30_000);

  it('the per-client stream cap holds across workers', async () => {
    // A fresh window for the request limit.
    await new Promise((r) => setTimeout(r, 5100));
    const slow = [
      request(a.url() + q('cap across a [[tokens=40 delay=20]]', '&thinking=false')),
      request(b.url() + q('cap across b [[tokens=40 delay=20]]', '&thinking=false')),
    ];
    await waitFor(() => sim.active >= 2, 5000, 'two streams open');
    const third = await request(a.url() + q('cap across third'));
    expect(third.status).toBe(429);
    expect(JSON.parse(third.body).error.message).toMatch(/concurrent streams/);
    const done = await Promise.all(slow);
    expect(done.map((r) => r.status)).toEqual([200, 200]);
  }, 30_000);
});
