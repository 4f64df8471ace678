// test/helpers/redis.ts: a throwaway redis-server on a free loopback port for tests that need
// shared state. Missing binary: the suite skips loudly, except under CI=true where it fails.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import Redis from 'ioredis';
import { freePort } from './free-port';

export const hasRedis = spawnSync('redis-server', ['--version']).status === 0;

/** `describe` when redis-server exists (or under CI, so a missing binary fails); else a loud skip. */
export function describeWithRedis(name: string, fn: () => void): void {
  if (hasRedis || process.env.CI === 'true') {
    describe(name, fn);
    return;
  }
  console.warn(`SKIPPED "${name}": redis-server is not installed (apt-get install redis-server)`);
  describe.skip(name, fn); // skipped: redis-server is not installed here (warned above); CI installs it
}

export interface RedisServer {
  url: string;
  stop(): Promise<void>;
}

export async function startRedis(): Promise<RedisServer> {
  const port = await freePort();
  const child: ChildProcess = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' },
  );
  const until = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.end();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > until) throw new Error('redis-server did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/**
 * A redis-server for the enclosing describe block, started before its tests and stopped after
 * them, with an admin client to it. Read `url` and `admin` inside tests and hooks.
 */
export function redisForSuite(): { readonly url: string; readonly admin: Redis } {
  let server: RedisServer | undefined;
  let admin: Redis | undefined;
  beforeAll(async () => {
    server = await startRedis();
    admin = new Redis(server.url);
  }, 20_000);
  afterAll(async () => {
    admin?.disconnect();
    await server?.stop();
  });
  return {
    get url() {
      return server!.url;
    },
    get admin() {
      return admin!;
    },
  };
}
