// Review findings (2026-11-29, late evening): the batch route's input checks, heartbeats and log
// lines; the DeepSeek key in text the upstream sends back; the cause of an internal error in the
// log; secrets one level down in a logged object.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { createApp } from '../../src/app';
import { testConfig } from '../../src/config';
import { createHttpServer } from '../../src/http-server';
import { createLogger } from '../../src/log';
import type { UpstreamClient } from '../../src/upstream/client';
import { describeWithRedis, redisForSuite } from '../helpers/redis';
import { parseSse, q, request, startStack, type Stack } from '../helpers/stack';

const batch = (stack: Stack, body: unknown, headers: Record<string, string> = {}) =>
  request(stack.url + '/chat-stream/batch', {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });

describe('batch input', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(() => stack.close());

  it('refuses a format that is neither sse nor ndjson', async () => {
    const res = await batch(stack, { prompts: ['a'], format: 'text' });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body).error.message).toMatch(/"format"/);
  });

  it('lets "format" win over Accept, as /chat-stream does', async () => {
    const res = await batch(
      stack,
      { prompts: ['a'], format: 'sse' },
      { accept: 'application/x-ndjson' },
    );
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
  });

  it('refuses "messages" instead of dropping them', async () => {
    const res = await batch(stack, { prompts: ['a'], messages: [{ role: 'user', content: 'b' }] });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body).error.message).toMatch(/messages/);
  });

  it('says which prompt is bad', async () => {
    const res = await batch(stack, { prompts: ['fine', 42] });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body).error.message).toMatch(/^prompts\[1\]: /);
  });

  it("logs each prompt's status and bytes", async () => {
    const before = stack.logs.length;
    const res = await batch(stack, { prompts: ['log me [[tokens=5]]', 'and me [[tokens=5]]'] });
    expect(res.status).toBe(200);
    const lines = stack.logs
      .slice(before)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.route === '/chat-stream/batch');
    expect(lines).toHaveLength(2);
    for (const l of lines) {
      expect(l.status).toBe(200);
      expect(l.bytesOut).toBeGreaterThan(0);
    }
  });
});

describe('NDJSON batch heartbeats', () => {
  it('a quiet NDJSON batch gets {"type":"ping"} lines', async () => {
    const stack = await startStack({ heartbeatMs: 100 });
    try {
      const res = await batch(
        stack,
        { prompts: ['queued a [[stall-first=500]]', 'queued b [[stall-first=500]]'] },
        { accept: 'application/x-ndjson' },
      );
      const lines = res.body
        .trimEnd()
        .split('\n')
        .map((l) => JSON.parse(l) as { type?: string });
      expect(lines.filter((l) => l.type === 'ping').length).toBeGreaterThanOrEqual(2);
      expect(lines.at(-1)).toEqual({ type: 'end' });
    } finally {
      await stack.close();
    }
  });
});

describe('the DeepSeek key in what the upstream sends back', () => {
  const KEY = 'ds.Zx81Qk3PrW9LmN2bT7vY';
  let upstream: http.Server;
  let base: string;
  beforeAll(async () => {
    upstream = http.createServer((req, res) => {
      let raw = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (raw += c));
      req.on('end', () => {
        // The prompt says how to echo the key: in a 400's message (without its first three
        // characters, as an upstream might print it), or quoted in a malformed event, cut short.
        const prompt = String(
          (JSON.parse(raw) as { messages: Array<{ content: string }> }).messages.at(-1)?.content,
        );
        if (prompt === 'refused') {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { message: `key ${KEY.slice(3)} is not valid` } }));
          return;
        }
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const token =
          'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash",' +
          '"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}\n\n';
        // A token first, so the failure is in-band; the event quoted back is cut at 60 characters.
        res.end(`${token}data: {"oops": "${'.'.repeat(40)}${KEY} and more text"\n\n`);
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => upstream.close(() => r())));

  it('never reaches the client, whole or in part', async () => {
    const stack = await startStack({ deepseekBaseUrl: base, deepseekApiKey: KEY, retryMax: 0 });
    try {
      const refused = await request(stack.url + q('refused', '&format=sse'));
      expect(refused.status).toBe(400);
      const garbage = await request(stack.url + q('garbage', '&format=sse'));
      expect(garbage.status).toBe(200);
      const err = parseSse(garbage.body).events.find((e) => e.event === 'error');
      expect(JSON.parse(err!.data).code).toBe('upstream_protocol_error');
      for (const body of [refused.body, garbage.body]) {
        expect(body).toContain('[redacted]');
        for (let at = 0; at + 8 <= KEY.length; at++)
          expect(body).not.toContain(KEY.slice(at, at + 8));
      }
    } finally {
      await stack.close();
    }
  });
});

describe('a bug inside a stream', () => {
  it('is logged with what it was, in the one line of that stream', async () => {
    const logs: string[] = [];
    const dest = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logs.push(chunk.toString());
        cb();
      },
    });
    const client: UpstreamClient = {
      post: () => Promise.reject(new TypeError('boom: a bug in the upstream client')),
      close: () => undefined,
    };
    const config = testConfig({ rateLimitMax: 0, maxStreamsPerClient: 0 });
    const app = createApp(config, { client, logger: createLogger('info', dest) });
    const server = createHttpServer(app, config.requestTimeoutMs);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const res = await request(url + q('anything'));
      expect(res.status).toBe(500);
      expect(res.body).not.toContain('boom');
      const line = logs
        .map((l) => JSON.parse(l) as { msg?: string; level?: number; err?: { message?: string } })
        .find((l) => l.msg === 'stream finished');
      expect(line?.level).toBe(50);
      expect(line?.err?.message).toBe('boom: a bug in the upstream client');
    } finally {
      await app.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe('log redaction', () => {
  it('hides secrets one level down in a logged object', () => {
    const out: string[] = [];
    const log = createLogger(
      'info',
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          out.push(chunk.toString());
          cb();
        },
      }),
    );
    log.info(
      {
        settings: { deepseekApiKey: 'sk-secret-1' },
        upstream: { headers: { authorization: 'Bearer sk-secret-2' } },
      },
      'x',
    );
    log.info({ error: { config: { headers: { Authorization: 'Bearer sk-secret-3' } } } }, 'y');
    const text = out.join('');
    expect(text).not.toMatch(/sk-secret/);
    expect(text).toContain('[redacted]');
  });
});

describe('a batch larger than MAX_CONCURRENT_STREAMS', () => {
  it('runs on an idle server, as many prompts at once as the cap allows', async () => {
    const stack = await startStack({ maxConcurrentStreams: 2 });
    try {
      let most = 0;
      const sampler = setInterval(() => {
        most = Math.max(most, stack.app.service.active.size);
      }, 2);
      const res = await batch(stack, {
        prompts: [0, 1, 2].map((i) => `global ${i} [[tokens=10 delay=10]]`),
      });
      clearInterval(sampler);
      expect(res.status).toBe(200);
      expect(most).toBe(2);
      const done = parseSse(res.body).events.filter((e) => e.event === 'done');
      expect(done.map((e) => JSON.parse(e.data).index).sort()).toEqual([0, 1, 2]);
    } finally {
      await stack.close();
    }
  });
});

describeWithRedis('a batch that runs prompts one after another, with Redis', () => {
  const redis = redisForSuite();

  it("keeps the client's slot count alive as each queued prompt starts", async () => {
    // The count's lifetime: STREAM_MAX_DURATION_MS + RESUME_GRACE_MS + 60 s = 61 s.
    const stack = await startStack({
      redisUrl: redis.url,
      maxStreamsPerClient: 1,
      streamMaxDurationMs: 1000,
      resumeGraceMs: 0,
    });
    try {
      const started = Date.now();
      let second = -1;
      const pending = batch(stack, {
        prompts: ['first in line [[tokens=30 delay=20]]', 'second in line [[tokens=30 delay=20]]'],
      });
      // When the second prompt reaches the upstream, the count was just renewed.
      for (let i = 0; i < 400 && second < 0; i++) {
        await new Promise((r) => setTimeout(r, 5));
        if (
          stack.sim.requests.some(
            (r) => r.body.messages?.[0]?.content === 'second in line [[tokens=30 delay=20]]',
          )
        ) {
          const [key] = await redis.admin.keys('dsp:streams:*');
          second = key ? await redis.admin.pttl(key) : -3;
        }
      }
      const elapsed = Date.now() - started;
      expect((await pending).status).toBe(200);
      expect(elapsed).toBeGreaterThan(500);
      // Without the renewal it would be 61 s less the time the first prompt ran.
      expect(second).toBeGreaterThan(61_000 - 300);
    } finally {
      await stack.close();
    }
  }, 20_000);
});
