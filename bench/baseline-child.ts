// bench/baseline-child.ts: the floor for any Node proxy. For each request, an http.request to the
// simulator with the request's body piped in, and the simulator's response piped straight out:
// no parsing, no framing, no journal, no logging. The same keep-alive pool settings as the
// proxy's upstream client (src/upstream/client.ts), so the comparison is about the code path.
// BENCH_UPSTREAM is the simulator's URL.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { serveParent } from './child-ipc';

async function main(): Promise<void> {
  const upstream = new URL(process.env.BENCH_UPSTREAM ?? '');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 5000, maxFreeSockets: 64 });
  const server = http.createServer((req, res) => {
    const up = http.request({
      host: upstream.hostname,
      port: upstream.port,
      method: 'POST',
      path: '/chat/completions',
      agent,
      headers: {
        Authorization: 'Bearer sk-bench',
        'Content-Type': 'application/json',
        Accept: 'text/event-stream',
        ...(req.headers['content-length']
          ? { 'Content-Length': req.headers['content-length'] }
          : {}),
      },
    });
    req.pipe(up);
    up.on('response', (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, {
        'Content-Type': upRes.headers['content-type'] ?? 'text/event-stream',
        'Cache-Control': 'no-cache',
      });
      upRes.pipe(res);
    });
    up.on('error', () => res.destroy());
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
  });
  server.requestTimeout = 0;
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve) =>
    server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve),
  );
  serveParent(
    (server.address() as AddressInfo).port,
    () => {
      agent.destroy();
      server.closeAllConnections();
      server.close();
    },
    server,
  );
}

void main();
