// bench/redis.ts: a throwaway redis-server on a free loopback port for the `sse-redis` target (the
// proxy with its resume journal in Redis). No persistence (`--save '' --appendonly no`), so Redis
// never forks a child whose CPU /proc/<pid>/stat would not show. The bench talks to it with a few
// raw RESP commands on a socket (PING, FLUSHALL): no client library in the load generator's
// process, no connection left open to cost Redis CPU during a measurement.
//
// The bench's Node children exit when their IPC channel closes; redis-server does not know us, so
// every live server is killed on the way out: normal end, an error (process.exit), or Ctrl-C/TERM.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { freePort } from '../test/helpers/free-port';

export interface RedisServer {
  pid: number;
  port: number;
  url: string;
  /** Drop every key (the journal of the previous run), so it does not grow across runs. */
  flush(): Promise<void>;
  stop(): Promise<void>;
}

let available: boolean | undefined;

/** True when `redis-server` is on the PATH and runs. */
export function hasRedisServer(): boolean {
  available ??= spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
  return available;
}

const live = new Set<ChildProcess>();
let hooked = false;

/** Kill whatever is still running when this process ends, however it ends. */
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const p of live) p.kill('SIGKILL');
  });
  // Without a handler these signals end Node without running 'exit' handlers. A terminal's Ctrl-C
  // reaches redis-server too (same process group), but `kill <bench pid>` would not.
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const) {
    process.once(signal, () => process.exit(code));
  }
}

/** One command as a RESP array of bulk strings; resolves with the first reply line. */
function command(port: number, args: string[], timeoutMs = 10_000): Promise<string> {
  const req =
    `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('');
  return new Promise((resolve, reject) => {
    let buf = '';
    const s = net.connect(port, '127.0.0.1', () => s.write(req));
    s.setTimeout(timeoutMs, () => s.destroy(new Error(`redis ${args[0]}: no reply`)));
    s.on('data', (b) => {
      buf += b.toString();
      const eol = buf.indexOf('\r\n');
      if (eol === -1) return;
      s.end();
      const line = buf.slice(0, eol);
      if (line.startsWith('-')) reject(new Error(`redis ${args[0]}: ${line.slice(1)}`));
      else resolve(line);
    });
    s.on('error', reject);
  });
}

export async function startRedisServer(): Promise<RedisServer> {
  hookExit();
  const port = await freePort();
  const proc = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  live.add(proc);
  const lines: string[] = [];
  const keep = (b: Buffer) => {
    for (const line of b.toString().split('\n')) if (line) lines.push(line);
    if (lines.length > 20) lines.splice(0, lines.length - 20);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    proc.on('exit', () => {
      exited = true;
      live.delete(proc);
      resolve();
    });
    // spawn failures (ENOENT) come as 'error', and then no 'exit' may follow.
    proc.on('error', (err) => {
      keep(Buffer.from(err.message));
      exited = true;
      live.delete(proc);
      resolve();
    });
  });

  // Ready when it answers PING; give up if it exits first (port taken since freePort) or hangs.
  const until = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`redis-server exited before it was ready:\n${lines.join('\n')}`);
    const pong = await command(port, ['PING'], 1000).catch(() => '');
    if (pong === '+PONG') break;
    if (Date.now() > until) {
      proc.kill('SIGKILL');
      throw new Error(`redis-server was not ready within 10 s:\n${lines.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  return {
    pid: proc.pid!,
    port,
    url: `redis://127.0.0.1:${port}`,
    async flush() {
      const reply = await command(port, ['FLUSHALL']);
      if (reply !== '+OK') throw new Error(`redis FLUSHALL answered ${reply}`);
    },
    async stop() {
      if (exited) return;
      // Nothing to save (--save ''), so SIGTERM exits at once; SIGKILL if it does not.
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await exit;
      clearTimeout(timer);
    },
  };
}
