// Accept-first as createHttpServer wires it: a burst's requests held and served, counted in
// /metrics, and the wait kept under a quarter of the request timeout.

import { spawn } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { BURST_WAIT_MS } from '../../src/accept-first';
import { createApp } from '../../src/app';
import { testConfig } from '../../src/config';
import { createHttpServer } from '../../src/http-server';
import { request } from '../helpers/stack';

function app() {
  return createApp(
    testConfig({ deepseekBaseUrl: 'http://127.0.0.1:9', useSimulator: false, rateLimitMax: 0 }),
  );
}

describe('accept-first in createHttpServer', () => {
  it('holds a burst until it is accepted, serves every request, and counts them in /metrics', async () => {
    const a = app();
    const server = createHttpServer(a, 60_000);
    // A busy server: 0.3 ms per accept, so the burst's requests come while connections wait.
    server.prependListener('connection', () => {
      const until = performance.now() + 0.3;
      while (performance.now() < until) {
        // busy
      }
    });
    await new Promise<void>((r) => server.listen({ port: 0, host: '127.0.0.1', backlog: 512 }, r));
    const port = (server.address() as AddressInfo).port;
    const N = 60;
    const client = `
      const net = require('net');
      const socks = []; let connected = 0; let ok = 0; let answered = 0;
      for (let i = 0; i < ${N}; i++) {
        let got = '';
        const s = net.connect(${port}, '127.0.0.1', () => {
          if (++connected === ${N}) for (const t of socks) t.write('GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');
        });
        s.on('data', (b) => (got += b));
        s.on('error', (e) => { console.error('socket', i, e.message); process.exit(3); });
        s.on('end', () => {
          if (got.startsWith('HTTP/1.1 200')) ok++;
          if (++answered === ${N}) { console.log(ok); process.exit(0); }
        });
        socks.push(s);
      }
      setTimeout(() => process.exit(2), 20000);`;
    let out = '';
    let stderr = '';
    const code = await new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, ['-e', client], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      child.on('exit', resolve);
    });
    try {
      expect({ code, stderr, ok: out.trim() }).toEqual({ code: 0, stderr: '', ok: String(N) });
      const held = server.acceptFirst.waited;
      expect(held).toBeGreaterThan(0);
      expect(server.acceptFirst.pending).toBe(0);
      const metrics = await request(`http://127.0.0.1:${port}/metrics`);
      expect(metrics.body).toContain(`dsp_burst_held_requests_total{outcome="served"} ${held}`);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      a.close();
    }
  });

  it('waits at most a quarter of the request timeout', () => {
    const a = app();
    try {
      expect(createHttpServer(a, 100).acceptFirst.maxWaitMs).toBe(25);
      expect(createHttpServer(a, 60_000).acceptFirst.maxWaitMs).toBe(BURST_WAIT_MS);
    } finally {
      a.close();
    }
  });
});
