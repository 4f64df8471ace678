// createHttpServer(): Node builds req and res from the app's own classes, so Express's per-request
// Object.setPrototypeOf changes nothing (docs/BENCHMARKS.md, "Changes since the 18:03 run"). The
// app must behave exactly as before: Express's request and response methods, per-app settings,
// HTTPS, and the JSON answer to a malformed request.

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { AddressInfo } from 'node:net';
import { createApp, type ProxyApp } from '../../src/app';
import { testConfig, type Config } from '../../src/config';
import { createHttpServer, type TlsFiles } from '../../src/http-server';
import { createLogger } from '../../src/log';
import { simulateAnswer } from '../../src/simulator/answer';
import { waitFor } from '../helpers/stack';
import { startSimulator, type Simulator } from '../../src/simulator/server';

v8.setFlagsFromString('--allow-natives-syntax');
const hasFastProperties = vm.runInNewContext('(o) => %HasFastProperties(o)') as (
  o: object,
) => boolean;

interface Arrival {
  reqProto: object | null;
  resProto: object | null;
  req: http.IncomingMessage;
  res: http.ServerResponse;
}

interface Served {
  app: ProxyApp;
  port: number;
  arrivals: Arrival[];
  close(): Promise<void>;
}

let sim: Simulator;
const open: Served[] = [];

beforeAll(async () => {
  sim = await startSimulator();
});
afterAll(async () => {
  for (const s of open) await s.close();
  await sim.close();
});

async function serve(overrides: Partial<Config> = {}, tls?: TlsFiles): Promise<Served> {
  const config = testConfig({
    requestTimeoutMs: 400,
    deepseekBaseUrl: sim.url,
    useSimulator: false,
    rateLimitMax: 0,
    maxStreamsPerClient: 0,
    ...overrides,
  });
  const app = createApp(config, { logger: createLogger('silent') });
  const server = createHttpServer(app, config.requestTimeoutMs, tls);
  const arrivals: Arrival[] = [];
  // Before Express sees them: what Node built.
  server.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    arrivals.push({
      reqProto: Object.getPrototypeOf(req),
      resProto: Object.getPrototypeOf(res),
      req,
      res,
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const served: Served = {
    app,
    port: (server.address() as AddressInfo).port,
    arrivals,
    async close() {
      await app.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  open.push(served);
  return served;
}

function get(
  port: number,
  pathname: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: pathname, headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      })
      .on('error', reject);
  });
}

describe('createHttpServer', () => {
  it("builds req and res with the app's prototypes, so Express has nothing to change", async () => {
    const s = await serve();
    const res = await get(s.port, '/v1/models');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body).object).toBe('list');
    expect(s.arrivals).toHaveLength(1);
    expect(s.arrivals[0]!.reqProto).toBe(s.app.request);
    expect(s.arrivals[0]!.resProto).toBe(s.app.response);
    const req = s.arrivals[0]!.req as http.IncomingMessage & { app?: unknown };
    expect(req).toBeInstanceOf(http.IncomingMessage);
    expect(req.app).toBe(s.app);
  });

  it('gives res.locals fast properties and no inherited ones, and Express keeps it', async () => {
    const s = await serve();
    const res = await get(s.port, '/chat-stream?format=text&prompt=hi%20[[tokens=2]]');
    expect(res.status).toBe(200);
    const locals = (s.arrivals[0]!.res as http.ServerResponse & { locals: Record<string, unknown> })
      .locals;
    expect(locals.requestId).toBe(res.headers['x-request-id']);
    // Express's own, Object.create(null), is a dictionary-mode object (a hash table each).
    expect(hasFastProperties(locals)).toBe(true);
    expect(Object.getPrototypeOf(Object.getPrototypeOf(locals))).toBeNull();
    expect('toString' in locals || 'constructor' in locals).toBe(false);
  });

  it("keeps Express's request and response API: a stream, headers, JSON errors", async () => {
    const s = await serve();
    const stream = await get(s.port, '/chat-stream?format=sse&prompt=hi%20[[tokens=3]]');
    expect(stream.status).toBe(200);
    expect(stream.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(stream.headers['x-content-type-options']).toBe('nosniff');
    expect(stream.body).toContain('event: done');
    const missing = await get(s.port, '/nowhere');
    expect(missing.status).toBe(404);
    expect(missing.headers['content-type']).toMatch(/^application\/json/);
    expect(JSON.parse(missing.body).error.code).toBe('not_found');
  });

  it("lets go of a stream's head once it is on the wire; the client gets it whole", async () => {
    const s = await serve();
    const slow = 'hi%20[[tokens=6%20delay=40]]';
    const streams: Array<{ path: string; body?: string; first: RegExp }> = [
      { path: `/chat-stream?format=sse&prompt=${slow}`, first: /data: \{"content"/ },
      { path: `/chat-stream?format=text&thinking=false&prompt=${slow}`, first: /./ },
      {
        path: '/v1/chat/completions',
        body: JSON.stringify({
          model: 'deepseek-v4-flash',
          stream: true,
          messages: [{ role: 'user', content: 'hi [[tokens=6 delay=40]]' }],
        }),
        first: /"delta":\{"content":"[^"]/,
      },
    ];
    for (const [i, st] of streams.entries()) {
      const { status, headers, body, midway } = await new Promise<{
        status: number;
        headers: http.IncomingHttpHeaders;
        body: string;
        midway: { sent: boolean; head: string; csp: unknown };
      }>((resolve, reject) => {
        const req = http.request(
          {
            host: '127.0.0.1',
            port: s.port,
            method: st.body ? 'POST' : 'GET',
            path: st.path,
            headers: st.body ? { 'content-type': 'application/json' } : {},
          },
          (res) => {
            let text = '';
            let midway: { sent: boolean; head: string; csp: unknown } | undefined;
            res.setEncoding('utf8');
            res.on('data', (c: string) => {
              text += c;
              if (midway === undefined && st.first.test(text)) {
                // The stream is open (tokens 40 ms apart): what the server still holds of it.
                const served = s.arrivals[i]!.res as http.ServerResponse & { _header: string };
                midway = {
                  sent: served.headersSent,
                  head: served._header,
                  csp: served.getHeader('content-security-policy'),
                };
              }
            });
            res.on('end', () =>
              resolve({
                status: res.statusCode ?? 0,
                headers: res.headers,
                body: text,
                midway: midway!,
              }),
            );
          },
        );
        req.on('error', reject);
        req.end(st.body);
      });
      expect(status).toBe(200);
      expect(headers['content-security-policy']).toContain("default-src 'none'");
      expect(headers['x-request-id']).toMatch(/\S/);
      expect(midway.sent).toBe(true);
      expect(midway.head).not.toContain('Content-Security-Policy');
      expect(midway.head).not.toContain(headers['x-request-id']);
      expect(midway.csp).toBeUndefined();
      // And the whole answer came after it.
      if (st.body) expect(body).toMatch(/data: \[DONE\]\n\n$/);
      else if (st.path.includes('sse')) expect(body).toContain('event: done');
      else expect(body).toBe(simulateAnswer('hi [[tokens=6 delay=40]]').text);
    }
  });

  it("keeps a stream's headers readable at 'finish' when the app is served by another server", async () => {
    // An embedder's server (an access log reading the headers at 'finish'): only the head's text
    // goes; the header map stays.
    const config = testConfig({
      deepseekBaseUrl: sim.url,
      useSimulator: false,
      rateLimitMax: 0,
      maxStreamsPerClient: 0,
    });
    const app = createApp(config, { logger: createLogger('silent') });
    const server = http.createServer(app);
    const logged: Array<{ id: unknown; csp: unknown; head: string }> = [];
    server.prependListener('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
      res.on('finish', () =>
        logged.push({
          id: res.getHeader('x-request-id'),
          csp: res.getHeader('content-security-policy'),
          head: (res as unknown as { _header: string })._header,
        }),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as AddressInfo).port;
      const res = await get(port, '/chat-stream?format=sse&prompt=hi%20[[tokens=3]]');
      expect(res.status).toBe(200);
      expect(res.body).toContain('event: done');
      expect(logged).toHaveLength(1);
      expect(logged[0]!.id).toBe(res.headers['x-request-id']);
      expect(logged[0]!.csp).toBe(res.headers['content-security-policy']);
      expect(logged[0]!.head).not.toContain('Content-Security-Policy');
    } finally {
      await app.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('gives each app its own classes: two apps in one process keep their own settings', async () => {
    const trusting = await serve({ trustProxy: 1 });
    const direct = await serve({ trustProxy: false });
    const forwarded = { 'X-Forwarded-For': '203.0.113.7' };
    await get(trusting.port, '/healthz', forwarded);
    await get(direct.port, '/healthz', forwarded);
    const a = trusting.arrivals[0]!.req as http.IncomingMessage & { ip?: string; app?: unknown };
    const b = direct.arrivals[0]!.req as http.IncomingMessage & { ip?: string; app?: unknown };
    expect(a.app).toBe(trusting.app);
    expect(b.app).toBe(direct.app);
    expect(a.ip).toBe('203.0.113.7');
    expect(b.ip).not.toBe('203.0.113.7');
    expect(trusting.app.request).not.toBe(direct.app.request);
  });

  it('serves HTTPS with the same classes', async () => {
    const dir = path.join(__dirname, '..', 'fixtures');
    const cert = fs.readFileSync(path.join(dir, 'tls-cert.pem'));
    const s = await serve({}, { cert, key: fs.readFileSync(path.join(dir, 'tls-key.pem')) });
    const status = await new Promise<number>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port: s.port, path: '/healthz', ca: cert }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        })
        .on('error', reject);
    });
    expect(status).toBe(200);
    expect(s.arrivals[0]!.reqProto).toBe(s.app.request);
  });

  it('answers a malformed request with the JSON 400', async () => {
    const s = await serve();
    const reply = await rawExchange(s.port, 'GET / HTTP/1.1\r\nBad Header\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(reply).toContain('"code":"invalid_request"');
  });

  it('answers 408 to a request whose body takes longer than REQUEST_TIMEOUT_MS', async () => {
    const s = await serve(); // requestTimeoutMs: 400
    const started = Date.now();
    const reply = await rawExchange(
      s.port,
      'POST /chat-stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Content-Length: 100\r\n\r\n{"pro',
    );
    expect(reply).toMatch(/^HTTP\/1\.1 408 /);
    expect(reply).toContain('"code":"request_timeout"');
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('answers 408 to headers that never end', async () => {
    const s = await serve();
    const reply = await rawExchange(s.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    expect(reply).toMatch(/^HTTP\/1\.1 408 /);
  });

  it('never cuts a response that runs longer than REQUEST_TIMEOUT_MS', async () => {
    const s = await serve(); // requestTimeoutMs: 400
    const started = Date.now();
    const res = await get(s.port, '/chat-stream?format=sse&prompt=hi%20[[tokens=12%20delay=100]]');
    expect(Date.now() - started).toBeGreaterThan(1000);
    expect(res.status).toBe(200);
    expect(res.body).toContain('event: done');
  });

  it('never cuts a stream answering a GET that came with a body nobody reads', async () => {
    const s = await serve(); // requestTimeoutMs: 400
    const body = 'x'.repeat(200_000);
    const reply = await rawExchange(
      s.port,
      'GET /chat-stream?format=sse&prompt=hi%20[[tokens=12%20delay=100]] HTTP/1.1\r\nHost: x\r\n' +
        `Connection: close\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(reply).toContain('event: done');
  });

  it('answers streams pipelined on one connection in order, each whole', async () => {
    const s = await serve();
    const a = 'pipelined a [[tokens=8 delay=30]]';
    const b = 'pipelined b [[tokens=5]]';
    const reply = await rawBytes(s.port, textGet(a) + textGet(b, 'Connection: close\r\n'));
    const answers = splitResponses(reply);
    expect(answers.map((r) => r.status)).toEqual([200, 200]);
    expect(answers[0]!.body).toBe(simulateAnswer(a).text);
    expect(answers[1]!.body).toBe(simulateAnswer(b).text);
  });

  it.each(['text', 'sse'])(
    'stops %s streams pipelined behind another when their connection closes while they wait',
    async (format) => {
      // Heartbeats every 100 ms: a queued SSE answer's would go on forever if it stayed open.
      const s = await serve({ heartbeatMs: 100, maxStreamsPerClient: 10 });
      const a = `pipelined wait ${format} a [[tokens=40 delay=50]]`;
      // 8 s each if nobody stops them.
      const queued = [1, 2, 3, 4, 5, 6].map(
        (n) => `pipelined wait ${format} ${n} [[tokens=400 delay=20]]`,
      );
      const ask = (p: string) => textGet(p).replace('format=text', `format=${format}`);
      const upstreamOf = (prompt: string) =>
        sim.requests.find((r) => r.body.messages?.some((m) => m.content === prompt));
      const sock = net.connect(s.port, '127.0.0.1', () =>
        sock.write([a, ...queued].map(ask).join('')),
      );
      const closed = new Promise((r) => sock.on('close', r));
      sock.on('error', () => undefined);
      // a streams; the six behind it generate too, their answers held until a's ends.
      await waitFor(() => queued.every((p) => upstreamOf(p) !== undefined), 3000, 'all started');
      const connection = s.arrivals[0]!.req.socket;
      // One listener for all of them on the connection (Node warns past ten).
      expect(connection.listenerCount('close')).toBeLessThan(5);
      sock.destroy();
      await closed;
      // Stopped with the connection, not left to run for a client that cannot see them.
      await waitFor(
        () => queued.every((p) => upstreamOf(p)?.clientClosed === true),
        3000,
        'their upstreams closed',
      );
      for (const p of queued) expect(upstreamOf(p)!.done).toBe(false); // 8 s each: not finished
      // And their responses are done with (an open one kept its heartbeat writing forever).
      for (const arrival of s.arrivals.slice(1)) expect(arrival.res.destroyed).toBe(true);
      // (a's client saw a's head, so a goes on into the journal for the resume grace.)
    },
  );

  it('never cuts a stream when a pipelined request behind it is slow to arrive', async () => {
    const s = await serve(); // requestTimeoutMs: 400
    const reply = await rawExchange(
      s.port,
      'GET /chat-stream?format=sse&prompt=hi%20[[tokens=12%20delay=100]] HTTP/1.1\r\nHost: x\r\n\r\n' +
        'POST /chat-stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Content-Length: 100\r\n\r\n{"pro',
    );
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(reply).toContain('event: done');
    // After the stream, the slow request gets its 408.
    expect(reply).toMatch(/HTTP\/1\.1 408 [\s\S]*"code":"request_timeout"/);
  });
});

/** A text-format GET of /chat-stream as raw HTTP/1.1. */
function textGet(prompt: string, extra = ''): string {
  return (
    `GET /chat-stream?format=text&thinking=false&prompt=${encodeURIComponent(prompt)} ` +
    `HTTP/1.1\r\nHost: x\r\n${extra}\r\n`
  );
}

/** As rawExchange, as bytes (chunk sizes count bytes, and the answers are not all ASCII). */
function rawBytes(port: number, text: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(text));
    const got: Buffer[] = [];
    sock.on('data', (c: Buffer) => got.push(c));
    sock.on('close', () => resolve(Buffer.concat(got)));
    sock.on('error', reject);
  });
}

/** The responses in a connection's bytes: status and body (chunked or Content-Length). */
function splitResponses(raw: Buffer): Array<{ status: number; body: string }> {
  const out: Array<{ status: number; body: string }> = [];
  let at = 0;
  while (at < raw.length) {
    const headEnd = raw.indexOf('\r\n\r\n', at);
    if (headEnd === -1) throw new Error(`no head at ${at}`);
    const head = raw.toString('latin1', at, headEnd);
    const status = Number(/^HTTP\/1\.1 (\d+)/.exec(head)?.[1]);
    at = headEnd + 4;
    const parts: Buffer[] = [];
    if (/\r\ntransfer-encoding: chunked/i.test(head)) {
      for (;;) {
        const lineEnd = raw.indexOf('\r\n', at);
        const size = parseInt(raw.toString('latin1', at, lineEnd), 16);
        at = lineEnd + 2;
        if (size === 0) {
          at += 2;
          break;
        }
        parts.push(raw.subarray(at, at + size));
        at += size + 2;
      }
    } else {
      const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 0);
      parts.push(raw.subarray(at, at + length));
      at += length;
    }
    out.push({ status, body: Buffer.concat(parts).toString('utf8') });
  }
  return out;
}

/** Write `text` on a fresh connection and collect everything until the server closes it. */
function rawExchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(text));
    let got = '';
    sock.setEncoding('utf8');
    sock.on('data', (c: string) => (got += c));
    sock.on('close', () => resolve(got));
    sock.on('error', reject);
  });
}
