// Heartbeats, the global stream cap, and one stream's exception never hurting another.

import { REFUSED_PORT } from '../helpers/free-port';
import { createApp } from '../../src/app';
import { testConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { simulateAnswer } from '../../src/simulator/answer';
import { startSimulator } from '../../src/simulator/server';
import { createUpstreamClient, type UpstreamClient } from '../../src/upstream/client';
import { parseSse, q, request, sseText, startStack, TEST_KEY, waitFor } from '../helpers/stack';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

describe('heartbeats', () => {
  it('an SSE stream idle for HEARTBEAT_MS gets ": ping" comments and still ends whole', async () => {
    const stack = await startStack({ heartbeatMs: 100, idleTimeoutMs: 5000 });
    try {
      const prompt = 'quiet thinker [[stall-after=2 stall=700]]';
      const res = await request(stack.url + q(prompt, '&format=sse'));
      const { events, comments } = parseSse(res.body);
      expect(comments.filter((c) => c === 'ping').length).toBeGreaterThanOrEqual(2);
      expect(sseText(events)).toBe(simulateAnswer(prompt).text);
    } finally {
      await stack.close();
    }
  });

  it('a busy stream gets no pings', async () => {
    const stack = await startStack({ heartbeatMs: 1000 });
    try {
      const res = await request(stack.url + q('busy [[tokens=50 delay=5]]', '&format=sse'));
      expect(parseSse(res.body).comments).toEqual([]);
    } finally {
      await stack.close();
    }
  });
});

describe('batch heartbeats', () => {
  it('an SSE batch waiting on its prompts gets ": ping" comments', async () => {
    const stack = await startStack({ heartbeatMs: 100 });
    try {
      const res = await request(stack.url + '/chat-stream/batch', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          prompts: ['queued a [[stall-first=500]]', 'queued b [[stall-first=500]]'],
        }),
      });
      const { comments } = parseSse(res.body);
      expect(comments.filter((c) => c === 'ping').length).toBeGreaterThanOrEqual(2);
      expect(res.body.endsWith('event: end\ndata: {}\n\n')).toBe(true);
    } finally {
      await stack.close();
    }
  });
});

describe('MAX_CONCURRENT_STREAMS', () => {
  it('answers 503 overloaded with Retry-After when the cap is reached, and recovers', async () => {
    const stack = await startStack({ maxConcurrentStreams: 2 });
    try {
      const slow = [1, 2].map((i) =>
        request(stack.url + q(`hold ${i} [[tokens=30 delay=20]]`, '&thinking=false')),
      );
      await waitFor(() => stack.app.service.active.size === 2);
      const third = await request(stack.url + q('one too many'));
      expect(third.status).toBe(503);
      expect(JSON.parse(third.body).error.code).toBe('overloaded');
      expect(third.headers['retry-after']).toBe('1');
      const done = await Promise.all(slow);
      expect(done.map((r) => r.status)).toEqual([200, 200]);
      const after = await request(stack.url + q('room again'));
      expect(after.status).toBe(200);
    } finally {
      await stack.close();
    }
  });
});

describe('an unexpected exception in one stream', () => {
  it('ends that stream with an error and never the others or the process', async () => {
    const sim = await startSimulator({ tokenDelayMs: 5 });
    const real = createUpstreamClient({
      baseUrl: sim.url,
      apiKey: TEST_KEY,
      maxSockets: 8,
      connectTimeoutMs: 1000,
    });
    const client: UpstreamClient = {
      post(path, body, abort) {
        // Routes hand the body over already serialised (a string) or as an object.
        const parsed = (typeof body === 'string' ? JSON.parse(body) : body) as {
          messages: Array<{ content: string }>;
        };
        if (parsed.messages[0]!.content === 'explode') throw new TypeError('a bug in the client');
        return real.post(path, body, abort);
      },
      close: () => real.close(),
    };
    const app = createApp(testConfig({ deepseekBaseUrl: sim.url, deepseekApiKey: TEST_KEY }), {
      client,
      logger: createLogger('silent'),
    });
    const server = http.createServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const [ok1, bad, ok2] = await Promise.all([
        request(url + q('neighbour one', '&format=sse')),
        request(url + q('explode')),
        request(url + q('neighbour two')),
      ]);
      expect(bad.status).toBe(500);
      expect(JSON.parse(bad.body).error.code).toBe('internal_error');
      expect(bad.body).not.toContain('a bug in the client');
      expect(sseText(parseSse(ok1.body).events)).toBe(simulateAnswer('neighbour one').text);
      expect(ok2.body).toBe(simulateAnswer('neighbour two').text);
    } finally {
      app.close();
      server.closeAllConnections();
      server.close();
      await sim.close();
    }
  });
});

describe('Redis unreachable', () => {
  it('API requests get 503 store_unavailable with Retry-After, and /readyz says why', async () => {
    const port = REFUSED_PORT; // nothing listens there
    // Rate limits on too: the limiter is the first to ask Redis on a limited route.
    for (const rateLimitMax of [0, 5]) {
      const stack = await startStack({ redisUrl: `redis://127.0.0.1:${port}`, rateLimitMax });
      try {
        const res = await request(stack.url + q('no store'));
        expect(res.status).toBe(503);
        expect(res.headers['retry-after']).toBe('1');
        expect(JSON.parse(res.body).error.code).toBe('store_unavailable');
        const ready = await request(stack.url + '/readyz');
        expect(ready.status).toBe(503);
        expect(stack.sim.requests).toHaveLength(0);
      } finally {
        await stack.close();
      }
    }
  }, 30_000);
});
