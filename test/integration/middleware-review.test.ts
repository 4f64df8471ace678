// Edge cases of the shared middleware: body errors a client can cause, CORS for browser SDKs and
// shared caches, and a readiness probe that answers even when the journal does not.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createApp } from '../../src/app';
import { testConfig } from '../../src/config';
import { MemoryJournalStore } from '../../src/journal/memory-store';
import { createLogger } from '../../src/log';
import { q, request, startStack, type Stack } from '../helpers/stack';

const ORIGIN = 'https://app.example';

describe('request bodies a client gets wrong', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ maxBodyBytes: 2048 });
  });
  afterAll(() => stack.close());

  const garbled = (path: string, encoding: string) =>
    request(stack.url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-encoding': encoding },
      body: 'this is not compressed at all',
    });

  it('a gzip or deflate body that does not decompress is 400 invalid_request, not a logged 500', async () => {
    const before = stack.logs.length;
    const text = await garbled('/chat-stream', 'gzip');
    expect(text.status).toBe(400);
    const body = JSON.parse(text.body);
    expect(body.error.code).toBe('invalid_request');
    expect(body.error.requestId).toBe(text.headers['x-request-id']);
    // The OpenAI surface answers in its own shape.
    const v1 = await garbled('/v1/chat/completions', 'deflate');
    expect(v1.status).toBe(400);
    expect(JSON.parse(v1.body).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'invalid_request',
    });
    expect(stack.logs.slice(before).join('')).not.toMatch(/unhandled error/);
    expect(stack.sim.requests).toHaveLength(0);
  });
});

describe('CORS', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ corsOrigins: [ORIGIN] });
  });
  afterAll(() => stack.close());

  const preflight = (requestHeaders: string) =>
    request(stack.url + '/v1/chat/completions', {
      method: 'OPTIONS',
      headers: {
        origin: ORIGIN,
        'access-control-request-method': 'POST',
        'access-control-request-headers': requestHeaders,
      },
    });

  /** The header names a preflight answer allows, lower-cased (what a browser compares). */
  const allowedNames = (headers: http.IncomingHttpHeaders) =>
    new Set(
      String(headers['access-control-allow-headers'] ?? '')
        .split(',')
        .map((h) => h.trim().toLowerCase()),
    );

  it('a preflight from the openai package (X-Stainless-* headers) allows every header it asks for', async () => {
    // What openai-node sends from a browser, besides Authorization and Content-Type.
    const asked = [
      'authorization',
      'content-type',
      'x-stainless-arch',
      'x-stainless-lang',
      'x-stainless-os',
      'x-stainless-package-version',
      'x-stainless-retry-count',
      'x-stainless-runtime',
      'x-stainless-runtime-version',
      'x-stainless-timeout',
    ];
    const pre = await preflight(asked.join(','));
    expect(pre.status).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBe(ORIGIN);
    const allowed = allowedNames(pre.headers);
    for (const h of asked) expect(allowed).toContain(h);
    // The answer depends on what was asked: a cache must not reuse it for another question.
    expect(String(pre.headers.vary)).toMatch(/Access-Control-Request-Headers/i);
  });

  it('a malformed Access-Control-Request-Headers is not echoed, and the usual list still applies', async () => {
    const pre = await preflight('x-ok, bad<header>; name');
    expect(pre.status).toBe(204);
    const allowed = allowedNames(pre.headers);
    expect(allowed).toContain('last-event-id');
    expect(allowed).not.toContain('x-ok');
    expect(String(pre.headers['access-control-allow-headers'])).not.toMatch(/bad/);
  });

  it('responses to requests without an allowed Origin still say Vary: Origin', async () => {
    // Otherwise a shared cache may keep the answer without Access-Control-Allow-Origin and
    // hand it to the allowed origin's page.
    for (const origin of [undefined, 'https://evil.example', ORIGIN]) {
      const headers: Record<string, string> = origin ? { origin } : {};
      const res = await request(stack.url + '/v1/models', { headers });
      expect(res.status).toBe(200);
      expect(String(res.headers.vary)).toMatch(/\bOrigin\b/);
      expect(res.headers['access-control-allow-origin']).toBe(
        origin === ORIGIN ? ORIGIN : undefined,
      );
    }
  });

  it('a fetch reader resuming a text stream with Range can read Content-Range', async () => {
    const prompt = 'cors text resume';
    const first = await request(stack.url + q(prompt), {
      headers: { origin: ORIGIN, 'x-request-id': 'cors-range' },
    });
    expect(first.status).toBe(200);
    const rest = await request(stack.url + q(prompt), {
      headers: { origin: ORIGIN, 'x-request-id': 'cors-range', range: 'bytes=4-' },
    });
    expect(rest.status).toBe(206);
    expect(rest.headers['content-range']).toBe('bytes 4-*/*');
    const exposed = String(rest.headers['access-control-expose-headers'])
      .split(',')
      .map((h) => h.trim().toLowerCase());
    expect(exposed).toEqual(
      expect.arrayContaining(['x-request-id', 'retry-after', 'ratelimit', 'content-range']),
    );
  });
});

describe('/readyz', () => {
  it('answers 503 within a few seconds when the journal never answers its ping', async () => {
    /** A Redis that accepts the connection and then says nothing. */
    class SilentJournal extends MemoryJournalStore {
      override ping(): Promise<boolean> {
        return new Promise<boolean>(() => undefined);
      }
    }
    const journal = new SilentJournal({
      ttlMs: 60_000,
      maxBytesPerStream: 1 << 20,
      maxBytesTotal: 1 << 24,
    });
    const app = createApp(testConfig({ rateLimitMax: 0, maxStreamsPerClient: 0 }), {
      journal,
      logger: createLogger('silent'),
    });
    const server = http.createServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const started = Date.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ready = await Promise.race([
        request(url + '/readyz'),
        new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 6000))),
      ]);
      clearTimeout(timer);
      expect(ready?.status).toBe(503);
      expect(JSON.parse(ready!.body).status).toBe('journal unreachable');
      expect(Date.now() - started).toBeLessThan(6000);
      // Alive all the same.
      expect((await request(url + '/healthz')).status).toBe(200);
    } finally {
      app.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  }, 15_000);
});
