// The request the upstream client sends: the head is written by our adapter from a fixed list
// (Host and Content-Length included), so it must carry exactly what DeepSeek needs, for a body of
// any bytes, over a kept-alive connection.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { createUpstreamClient, UpstreamAbort } from '../../src/upstream/client';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  socket: unknown;
}

let server: http.Server;
let port = 0;
const seen: Seen[] = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        socket: req.socket,
      });
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

it('sends the key, JSON, identity encoding, Host and the exact Content-Length, kept alive', async () => {
  const client = createUpstreamClient({
    baseUrl: `http://127.0.0.1:${port}/base/`,
    apiKey: 'sk-head-test-0123456789',
    maxSockets: 4,
    connectTimeoutMs: 5000,
  });
  try {
    const bodies = ['{"prompt":"plain"}', { messages: [{ content: '流式传输 🚀 café' }] }];
    for (const body of bodies) {
      const res = await client.post('/chat/completions', body, new UpstreamAbort());
      expect(res.status).toBe(200);
      // Once the answer's head is in, Node's copy of the request's head (the key in it) is gone.
      const req = (res.body as http.IncomingMessage & { req: http.ClientRequest }).req;
      expect(req.headersSent).toBe(true);
      expect((req as unknown as { _header: string })._header).not.toContain('sk-head-test');
      res.body.resume();
      await new Promise((r) => res.body.on('end', r));
    }
    expect(seen).toHaveLength(2);
    for (const [i, s] of seen.entries()) {
      const sent = typeof bodies[i] === 'string' ? bodies[i] : JSON.stringify(bodies[i]);
      expect(s.method).toBe('POST');
      expect(s.url).toBe('/base/chat/completions');
      expect(s.body).toBe(sent);
      expect(s.headers).toMatchObject({
        host: `127.0.0.1:${port}`,
        authorization: 'Bearer sk-head-test-0123456789',
        'content-type': 'application/json',
        accept: 'text/event-stream, application/json',
        'accept-encoding': 'identity',
        'content-length': String(Buffer.byteLength(sent)),
        connection: 'keep-alive',
      });
      expect(s.headers['transfer-encoding']).toBeUndefined();
    }
    // One connection for both: the pool keeps it.
    expect(seen[1]!.socket).toBe(seen[0]!.socket);
  } finally {
    client.close();
  }
});

// Machines without an IPv6 loopback cannot run it: skipped there, with the reason in its name.
const hasIpv6Loopback = Object.values(os.networkInterfaces())
  .flat()
  .some((i) => i?.address === '::1');
const itIpv6 = hasIpv6Loopback ? it : it.skip;

itIpv6(
  `reaches an IPv6 literal base URL, with its Host header bracketed${hasIpv6Loopback ? '' : ' (skipped: no IPv6 loopback here)'}`,
  async () => {
    const hosts: Array<string | undefined> = [];
    const v6 = http.createServer((req, res) => {
      hosts.push(req.headers.host);
      req.resume();
      req.on('end', () => res.writeHead(200).end('data: [DONE]\n\n'));
    });
    await new Promise<void>((r) => v6.listen(0, '::1', r));
    const v6port = (v6.address() as AddressInfo).port;
    const client = createUpstreamClient({
      baseUrl: `http://[::1]:${v6port}`,
      apiKey: 'sk-head-test-0123456789',
      maxSockets: 2,
      connectTimeoutMs: 5000,
    });
    try {
      const res = await client.post('/chat/completions', '{}', new UpstreamAbort());
      expect(res.status).toBe(200);
      res.body.resume();
      expect(hosts).toEqual([`[::1]:${v6port}`]);
    } finally {
      client.close();
      v6.closeAllConnections();
      await new Promise<void>((r) => v6.close(() => r()));
    }
  },
);
