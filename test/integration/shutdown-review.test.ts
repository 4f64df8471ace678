// Shutdown corners found by a review: a stream with nothing sent yet when the drain hands
// streams off (shared journal), requests still waiting on Redis when SIGTERM comes, an embedder's
// app.close() during a stream, and the metrics listener (taken port; scrapes during the drain).

import http from 'node:http';
import net from 'node:net';
import { startServerProcess as startServer } from '../helpers/proc';
import { describeWithRedis, redisForSuite } from '../helpers/redis';
import { freePort } from '../helpers/free-port';
import { parseSse, q, request, sseText, startStack, waitFor } from '../helpers/stack';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeWithRedis('SIGTERM with the journal in Redis', () => {
  const redis = redisForSuite();

  it.each(['sse', 'text'])(
    '(%s) a stream still queued upstream (nothing sent) gets the JSON 503, not an empty 200',
    async (format) => {
      const p = startServer({
        PORT: '0',
        HOST: '127.0.0.1',
        REDIS_URL: redis.url,
        SHUTDOWN_GRACE_MS: '300',
        SIMULATOR_TOKEN_DELAY_MS: '0',
      });
      const base = await p.ready();
      const res = request(base + q('queued [[queue=3000 ka=200 tokens=5]]', `&format=${format}`), {
        headers: format === 'sse' ? { accept: 'text/event-stream' } : {},
      });
      await sleep(700); // the upstream answered 200 and sends keep-alives; no token yet
      p.child.kill('SIGTERM');
      const r = await res;
      expect(r.status).toBe(503);
      expect(r.headers['content-type']).toMatch(/^application\/json/);
      expect(r.headers['retry-after']).toBe('1');
      expect(JSON.parse(r.body).error.code).toBe('shutting_down');
      expect(await p.exit).toBe(0);
    },
    30_000,
  );

  it('a request waiting on Redis when SIGTERM comes is answered 503, not cut', async () => {
    const p = startServer({
      PORT: '0',
      HOST: '127.0.0.1',
      REDIS_URL: redis.url,
      SHUTDOWN_GRACE_MS: '5000',
      SIMULATOR_TOKEN_DELAY_MS: '0',
    });
    const base = await p.ready();
    expect((await request(base + '/readyz')).status).toBe(200);
    await redis.admin.call('CLIENT', 'PAUSE', '1500');
    const res = request(base + q('waits on redis', '&format=sse'), {
      headers: { accept: 'text/event-stream' },
    });
    await sleep(300); // in a guard or the journal claim, waiting for Redis
    p.child.kill('SIGTERM');
    const r = await res;
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body).error.code).toBe('shutting_down');
    expect(await p.exit).toBe(0);
  }, 30_000);
});

describe('SIGTERM with a request whose body never finishes arriving', () => {
  it('does not hold the shutdown for the whole grace', async () => {
    const p = startServer({ PORT: '0', HOST: '127.0.0.1', SHUTDOWN_GRACE_MS: '20000' });
    const base = await p.ready();
    const { port } = new URL(base);
    const socket = net.connect(Number(port), '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise<void>((r) => socket.once('connect', () => r()));
    // Headers and half the body, then nothing: body-parser is still reading it.
    socket.write(
      'POST /chat-stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Content-Length: 100\r\n\r\n{"prompt":',
    );
    await sleep(300);
    const t0 = Date.now();
    p.child.kill('SIGTERM');
    expect(await p.exit).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000); // the grace is 20 s
    socket.destroy();
  }, 40_000);
});

describe('app.close() during a stream (an embedder shutting down)', () => {
  it('ends the stream with the in-band shutting_down error, not a silent open response', async () => {
    const stack = await startStack({}, { tokenDelayMs: 20 });
    try {
      let started = false;
      const res = request(stack.url + q('long [[tokens=2000]]', '&format=sse&thinking=false'), {
        onChunk: (_c, soFar) => void (started = soFar.includes('"content"')),
      });
      await waitFor(() => started, 5000, 'first token');
      await stack.app.close();
      const r = await res;
      const { events } = parseSse(r.body);
      expect(sseText(events).length).toBeGreaterThan(0);
      expect(events.at(-1)!.event).toBe('error');
      expect(JSON.parse(events.at(-1)!.data).code).toBe('shutting_down');
      const metrics = await stack.app.metrics.registry.metrics();
      expect(metrics).toMatch(/dsp_client_disconnects_total 0/);
    } finally {
      await stack.close();
    }
  }, 30_000);
});

describe('METRICS_PORT', () => {
  it('taken: the process exits 1 with one line naming it, not a worker without metrics', async () => {
    const holder = net.createServer();
    const port = await freePort();
    await new Promise<void>((r) => holder.listen(port, '127.0.0.1', r));
    try {
      const p = startServer({ PORT: '0', HOST: '127.0.0.1', METRICS_PORT: String(port) });
      expect(await p.exit).toBe(1);
      expect(p.out.join('')).toMatch(/deepseek-stream-proxy: METRICS_PORT: .*EADDRINUSE/);
    } finally {
      holder.close();
    }
  }, 30_000);

  it('answers scrapes during the drain, until the process exits', async () => {
    const metricsPort = await freePort();
    const p = startServer({
      PORT: '0',
      HOST: '127.0.0.1',
      METRICS_PORT: String(metricsPort),
      SIMULATOR_TOKEN_DELAY_MS: '20',
      SHUTDOWN_GRACE_MS: '1500',
    });
    const base = await p.ready();
    let started = false;
    const stream = request(base + q('drained [[tokens=2000]]', '&format=sse&thinking=false'), {
      onChunk: () => void (started = true),
    });
    await waitFor(() => started, 5000, 'stream started');
    p.child.kill('SIGTERM');
    await sleep(300);
    const scrape = await new Promise<number>((resolve) => {
      http
        .get(`http://127.0.0.1:${metricsPort}/metrics`, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on('error', () => resolve(-1));
    });
    expect(scrape).toBe(200);
    await stream;
    expect(await p.exit).toBe(0);
  }, 30_000);
});
