// Retries before the first token: counted at the simulator.

import http from 'node:http';
import { REFUSED_PORT } from '../helpers/free-port';
import { simulateAnswer } from '../../src/simulator/answer';
import { parseSse, q, request, sseText, startStack, waitFor, type Stack } from '../helpers/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({
    retryMax: 3,
    retryBaseDelayMs: 1,
    retryMaxDelayMs: 5,
    upstreamResumeMax: 0,
  });
});
afterAll(() => stack.close());

const upstreamCount = (prompt: string) =>
  stack.sim.requests.filter((r) => r.body.messages?.some((m) => m.content === prompt)).length;

describe('retry before the first token', () => {
  const healed: Array<[string, number]> = [
    ['status=429 times=2', 3],
    ['status=500', 2],
    ['status=502', 2],
    ['status=503 times=3', 4],
    ['status=504', 2],
    ['status=408', 2],
    ['status=503 html', 2],
    ['reset=0', 2], // the socket dies after the role chunk, before any token
    ['cut=10', 2], // the socket dies inside the first event
    ['finish=insufficient_system_resource finish-after=0', 2],
  ];
  for (const [directive, requests] of healed) {
    it(`heals ${directive} with ${requests} upstream requests and the exact answer`, async () => {
      const prompt = `retry ${directive} [[${directive}]]`;
      const res = await request(stack.url + q(prompt, '&thinking=false'));
      expect(res.status).toBe(200);
      expect(res.body).toBe(simulateAnswer(prompt).text);
      expect(upstreamCount(prompt)).toBe(requests);
      // Each retry asks for the same thing (the engine serialises the request again for it).
      const sent = stack.sim.requests
        .filter((r) => r.body.messages?.some((m) => m.content === prompt))
        .map((r) => JSON.stringify(r.body));
      expect(new Set(sent).size).toBe(1);
    });
  }

  it('gives up after RETRY_MAX retries with 503 upstream_unavailable and Retry-After', async () => {
    const prompt = 'retry spent [[status=503 times=99]]';
    const res = await request(stack.url + q(prompt));
    expect(res.status).toBe(503);
    expect(JSON.parse(res.body).error.code).toBe('upstream_unavailable');
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(upstreamCount(prompt)).toBe(4);
  });

  it('never retries once a token has reached the client', async () => {
    const prompt = 'no retry after token [[reset=3 delay=5]]';
    const res = await request(stack.url + q(prompt, '&thinking=false&format=sse'));
    expect(res.status).toBe(200);
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe(simulateAnswer(prompt).content.slice(0, 3).join(''));
    const last = events[events.length - 1]!;
    expect(last.event).toBe('error');
    expect(JSON.parse(last.data).code).toBe('upstream_reset');
    expect(upstreamCount(prompt)).toBe(1);
  });

  it('does not retry after the client has left', async () => {
    const prompt = 'client left during backoff [[status=503 retry-after=1 times=9]]';
    // The first attempt fails at once and a 1 s wait begins; hang up during it.
    const req = http.get(stack.url + q(prompt), { agent: false });
    req.on('error', () => undefined);
    await waitFor(() => upstreamCount(prompt) === 1, 3000, 'first attempt');
    req.destroy();
    await new Promise((r) => setTimeout(r, 1500));
    expect(upstreamCount(prompt)).toBe(1);
    await waitFor(() =>
      stack.logs.some((l) => l.includes('client_aborted') && l.includes('"retries":1')),
    );
  });

  it('waits what Retry-After asks (seconds) before the retry', async () => {
    const prompt = 'retry-after seconds [[status=429 retry-after=1]]';
    const t0 = Date.now();
    const res = await request(stack.url + q(prompt, '&thinking=false'));
    const elapsed = Date.now() - t0;
    expect(res.status).toBe(200);
    expect(upstreamCount(prompt)).toBe(2);
    expect(elapsed).toBeGreaterThanOrEqual(900);
  });

  it('waits what retry-after-ms asks before the retry', async () => {
    const prompt = 'retry-after-ms [[status=503 retry-after-ms=400]]';
    const t0 = Date.now();
    const res = await request(stack.url + q(prompt, '&thinking=false'));
    expect(res.status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
  });
});

describe('connection failures', () => {
  it('an upstream that refuses connections is retried, then 503 upstream_unavailable', async () => {
    const port = REFUSED_PORT; // nothing listens there
    const dead = await startStack({
      deepseekBaseUrl: `http://127.0.0.1:${port}`,
      retryMax: 2,
      retryBaseDelayMs: 1,
      retryMaxDelayMs: 2,
    });
    try {
      const res = await request(dead.url + q('nobody home'));
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body).error.code).toBe('upstream_unavailable');
      await waitFor(() => dead.logs.some((l) => l.includes('stream finished')));
      const line = JSON.parse(dead.logs.find((l) => l.includes('stream finished'))!);
      expect(line.retries).toBe(2);
      expect(line.upstreamRequests).toBe(3);
    } finally {
      await dead.close();
    }
  });
});
