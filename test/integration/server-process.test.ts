// The server as a process, as `npm start` runs it: start-up validation, the simulator fallback,
// and graceful shutdown.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseSse, q, request, sseText, waitFor } from '../helpers/stack';
import { startServerProcess as startServer } from '../helpers/proc';
import { simulateAnswer } from '../../src/simulator/answer';

describe('start-up', () => {
  it('exits non-zero naming the variable when a setting is bad', async () => {
    const p = startServer({ PORT: 'abc' });
    expect(await p.exit).toBe(1);
    expect(p.out.join('')).toContain('PORT');
  }, 20_000);

  it('refuses to start in production without DEEPSEEK_API_KEY', async () => {
    const p = startServer({ NODE_ENV: 'production', PORT: '0' });
    expect(await p.exit).toBe(1);
    expect(p.out.join('')).toContain('DEEPSEEK_API_KEY');
  }, 20_000);

  it('without a key serves from the simulator, warns, and streams an answer', async () => {
    const p = startServer({ PORT: '0', HOST: '127.0.0.1', SIMULATOR_TOKEN_DELAY_MS: '0' });
    try {
      const base = await p.ready();
      expect(p.out.join('')).toMatch(/"level":40.*simulator/);
      const res = await request(base + q('hello'));
      expect(res.status).toBe(200);
      expect(res.body).toBe(simulateAnswer('hello').text);
    } finally {
      p.child.kill('SIGTERM');
      expect(await p.exit).toBe(0);
    }
  }, 30_000);
});

describe("the Docker image's HEALTHCHECK", () => {
  // The command as the Dockerfile has it, run with node here against a server on HOST.
  const dockerfile = fs.readFileSync(path.join(__dirname, '../../Dockerfile'), 'utf8');
  const cmd = JSON.parse(/HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])/.exec(dockerfile)![1]!) as string[];
  const check = (env: Record<string, string>) =>
    new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, cmd.slice(1), {
        env: { PATH: process.env.PATH ?? '', ...env },
        stdio: 'ignore',
      });
      child.on('exit', (code) => resolve(code));
    });

  it('asks the address HOST names, and fails when nothing answers there', async () => {
    expect(cmd[0]).toBe('node');
    // 127.0.0.2 is loopback too (all of 127/8), but a server bound to it is not on 127.0.0.1.
    const p = startServer({ PORT: '0', HOST: '127.0.0.2', SIMULATOR_TOKEN_DELAY_MS: '0' });
    try {
      const port = new URL(await p.ready()).port;
      expect(await check({ PORT: port, HOST: '127.0.0.2' })).toBe(0);
      expect(await check({ PORT: port, HOST: ' [127.0.0.2] ' })).toBe(0);
      expect(await check({ PORT: port, HOST: '127.0.0.3' })).toBe(1);
      // Unset or a wildcard: 127.0.0.1, where this server is not.
      expect(await check({ PORT: port })).toBe(1);
      expect(await check({ PORT: port, HOST: '0.0.0.0' })).toBe(1);
    } finally {
      p.child.kill('SIGTERM');
      expect(await p.exit).toBe(0);
    }
  }, 30_000);
});

describe('graceful shutdown', () => {
  it('on SIGTERM: readiness fails, short streams finish, long ones end with shutting_down, exit 0', async () => {
    const p = startServer({
      PORT: '0',
      HOST: '127.0.0.1',
      SIMULATOR_TOKEN_DELAY_MS: '20',
      SHUTDOWN_GRACE_MS: '1500',
    });
    const base = await p.ready();
    let shortSeen = false;
    let longSeen = false;
    const short = request(base + q('short one [[tokens=20]]', '&format=sse&thinking=false'), {
      onChunk: () => void (shortSeen = true),
    });
    const long = request(base + q('long one [[tokens=2000]]', '&format=sse&thinking=false'), {
      onChunk: () => void (longSeen = true),
    });
    await waitFor(() => shortSeen && longSeen, 5000, 'both streams started');
    const t0 = Date.now();
    p.child.kill('SIGTERM');
    // While draining, readiness fails (or the listener is already closed).
    await new Promise((r) => setTimeout(r, 100));
    const ready = await request(base + '/readyz').catch(() => undefined);
    if (ready) expect(ready.status).toBe(503);
    const [s, l] = await Promise.all([short, long]);
    const shortEvents = parseSse(s.body).events;
    expect(shortEvents.at(-1)!.event).toBe('done');
    expect(sseText(shortEvents)).toBe(simulateAnswer('short one [[tokens=20]]').text);
    const longEvents = parseSse(l.body).events;
    const last = longEvents.at(-1)!;
    expect(last.event).toBe('error');
    expect(JSON.parse(last.data).code).toBe('shutting_down');
    expect(simulateAnswer('long one [[tokens=2000]]').text.startsWith(sseText(longEvents))).toBe(
      true,
    );
    expect(await p.exit).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    expect(p.out.join('')).toContain('"stopped"');
  }, 30_000);
});
