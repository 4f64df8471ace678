// `pm2 reload` under load: ecosystem.config.js runs two cluster workers sharing one redis-server;
// 20 SSE streams are in flight when the workers are reloaded, and every one of them still ends
// with `done` and exactly the simulator's answer. A stream the reload cuts is resumed as
// EventSource would (Last-Event-ID, on whichever worker answers); the test counts those.
// PM2 runs from node_modules with a throwaway PM2_HOME, so it never touches a user's PM2.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { simulateAnswer } from '../../src/simulator/answer';
import { startSimulator, type Simulator } from '../../src/simulator/server';
import { describeWithRedis, startRedis, type RedisServer } from '../helpers/redis';
import { parseSse, q, waitFor, type SseEvent } from '../helpers/stack';

const root = path.resolve(__dirname, '../..');
const pm2Bin = path.join(root, 'node_modules/.bin/pm2');
const APP = 'deepseek-stream-proxy';
const STREAMS = 20;
const SHUTDOWN_GRACE_MS = 8000;

/** Run a command; resolves with stdout, rejects with the command's output in the message. */
function run(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { cwd: root, env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err) {
          reject(
            new Error(
              `${path.basename(file)} ${args.join(' ')}: ${err.message}\n${stdout}${stderr}`,
            ),
          );
        } else {
          resolve(stdout);
        }
      },
    );
  });
}

/** Newest modification time of any file under `dir`. */
function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : fs.statSync(p).mtimeMs);
  }
  return newest;
}

/**
 * A free loopback port below the kernel's ephemeral range. PM2's master binds PORT only when the
 * first worker listens, seconds after the port was chosen; a port from the ephemeral range
 * (what listen(0) gives) can meanwhile become the source port of some outgoing connection on a
 * busy machine, and the bind then fails with EADDRINUSE.
 */
async function freePort(): Promise<number> {
  let low = 32768;
  try {
    low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0]);
  } catch {
    // not Linux: keep the usual default
  }
  const floor = Math.min(20000, low - 1000);
  for (let tries = 0; tries < 100; tries++) {
    const port = floor + Math.floor(Math.random() * (low - floor));
    const free = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free loopback port below the ephemeral range');
}

function getStatus(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.setTimeout(2000, () => req.destroy());
  });
}

interface Pm2Proc {
  pid: number;
  pm_id: number;
  pm2_env: { status: string; exec_mode: string; kill_timeout: number; restart_time: number };
}

/** One SSE stream, followed through any number of reconnections. */
interface Tracked {
  prompt: string;
  requestId: string;
  events: SseEvent[];
  /** Response statuses of every attempt (the first, then each resume). */
  statuses: number[];
  resumes: number;
  done: boolean;
  failure?: string;
}

const MAX_ATTEMPTS = 6;
/** Delay before a reconnection (EventSource waits the stream's `retry:`; a test need not). */
const RECONNECT_DELAY_MS = 250;

/** One request: collects complete SSE events; resolves when the connection ends either way. */
function attempt(url: string, t: Tracked, headers: Record<string, string>): Promise<void> {
  return new Promise((resolve) => {
    let buf = '';
    let settled = false;
    const settle = () => {
      if (settled) return;
      settled = true;
      resolve();
    };
    const req = http.get(url, { agent: false, headers }, (res) => {
      t.statuses.push(res.statusCode ?? 0);
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (res.statusCode !== 200) return;
        buf += chunk;
        const cut = buf.lastIndexOf('\n\n');
        if (cut === -1) return;
        const { events } = parseSse(buf.slice(0, cut + 2));
        buf = buf.slice(cut + 2);
        for (const ev of events) {
          t.events.push(ev);
          if (ev.event === 'done') t.done = true;
        }
      });
      res.on('end', settle);
      res.on('close', settle);
      res.on('error', settle);
    });
    // Refused or reset before a response: counts as a cut, like any other.
    req.on('error', () => {
      t.statuses.push(-1);
      settle();
    });
  });
}

/** Follow a stream to its end, reconnecting with Last-Event-ID after every cut. */
async function follow(base: string, t: Tracked): Promise<void> {
  const url = base + q(t.prompt, '&format=sse&thinking=false');
  await attempt(url, t, { 'x-request-id': t.requestId });
  for (let n = 1; !t.done; n++) {
    const status = t.statuses.at(-1);
    const last = t.events.at(-1);
    // As EventSource: any answer but 200 (a 204 included) ends the stream for good; a refused
    // or reset connection, or a 200 body cut before `done`, is reconnected.
    if (status !== 200 && status !== -1) t.failure = `HTTP ${status} before done`;
    else if (last?.event === 'error') t.failure = `in-band error: ${last.data}`;
    else if (n >= MAX_ATTEMPTS) t.failure = `no done after ${MAX_ATTEMPTS} attempts`;
    if (t.failure) return;
    await new Promise((r) => setTimeout(r, RECONNECT_DELAY_MS));
    t.resumes++;
    // Before any event the stream id is all we have: the same X-Request-ID replays from the start.
    await attempt(
      url,
      t,
      last?.id ? { 'last-event-id': last.id } : { 'x-request-id': t.requestId },
    );
  }
}

function text(events: SseEvent[]): string {
  return events
    .filter((e) => e.event === 'message')
    .map((e) => (JSON.parse(e.data) as { content: string }).content)
    .join('');
}

describeWithRedis('PM2 cluster: pm2 reload with streams in flight', () => {
  let pm2Home: string | undefined;
  let pm2Env: NodeJS.ProcessEnv = {};
  let redis: RedisServer | undefined;
  let sim: Simulator | undefined;
  let base: string;

  const pm2 = (args: string[], timeoutMs = 30_000) => {
    // Never without our own PM2_HOME: that would act on the user's PM2.
    if (!pm2Home) return Promise.reject(new Error('no PM2_HOME yet'));
    const minimal = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' };
    return run(pm2Bin, args, { ...minimal, ...pm2Env, PM2_HOME: pm2Home }, timeoutMs);
  };
  const jlist = async (): Promise<Pm2Proc[]> =>
    (JSON.parse(await pm2(['jlist'])) as Pm2Proc[]).filter((p) => typeof p.pm_id === 'number');

  /** The end of PM2's own log and of the workers' logs, for failure messages. */
  const logs = (): string => {
    if (!pm2Home) return '';
    const files = [path.join(pm2Home, 'pm2.log')];
    const dir = path.join(pm2Home, 'logs');
    if (fs.existsSync(dir)) files.push(...fs.readdirSync(dir).map((f) => path.join(dir, f)));
    return files
      .filter((f) => fs.existsSync(f))
      .map(
        (f) =>
          `--- ${path.basename(f)}\n${fs.readFileSync(f, 'utf8').split('\n').slice(-40).join('\n')}`,
      )
      .join('\n');
  };

  beforeAll(async () => {
    const server = path.join(root, 'dist/server.js');
    if (
      !fs.existsSync(server) ||
      fs.statSync(server).mtimeMs < newestMtime(path.join(root, 'src'))
    ) {
      await run('npm', ['run', 'build'], process.env, 60_000);
    }
    redis = await startRedis();
    sim = await startSimulator();
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    // A short path: PM2's unix sockets live here, and socket paths are limited to ~107 bytes.
    pm2Home = fs.mkdtempSync(path.join(os.tmpdir(), 'pm2-'));
    // PM2 checks its version online on a first run in a new PM2_HOME unless this file exists.
    fs.writeFileSync(path.join(pm2Home, 'touch'), String(Date.now()));
    pm2Env = {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      PM2_HOME: pm2Home,
      PM2_DISABLE_VERSION_CHECK: 'true',
      // What the workers get: the ecosystem file merges the environment of `pm2 start`.
      PORT: String(port),
      HOST: '127.0.0.1',
      PM2_INSTANCES: '2',
      DEEPSEEK_API_KEY: 'sk-test',
      DEEPSEEK_BASE_URL: sim.url,
      REDIS_URL: redis.url,
      SHUTDOWN_GRACE_MS: String(SHUTDOWN_GRACE_MS),
      NODE_ENV: 'production',
      // info, for the "shutting down" line that says how many streams a worker was draining.
      LOG_LEVEL: 'info',
      // One loopback client opens all 20 streams: the fairness limits have their own tests.
      RATE_LIMIT_MAX: '0',
      MAX_STREAMS_PER_CLIENT: '0',
      // Set and empty, so a developer's .env cannot switch these on (dotenv never overrides).
      PROXY_API_KEYS: '',
      SIGNING_SECRET: '',
      METRICS_PORT: '',
      TLS_CERT_FILE: '',
      TLS_KEY_FILE: '',
    };
    await pm2(['start', 'ecosystem.config.js', '--update-env'], 60_000);
    const until = Date.now() + 30_000;
    while ((await getStatus(`${base}/readyz`)) !== 200) {
      if (Date.now() > until) throw new Error(`the PM2 cluster never became ready\n${logs()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 120_000);

  afterAll(async () => {
    if (pm2Home) {
      // Always stop this PM2 (daemon and workers), even when the test or the set-up failed.
      await pm2(['kill'], 20_000).catch((err: Error) => {
        console.error(`pm2 kill failed: ${err.message}`);
        const pidFile = path.join(pm2Home!, 'pm2.pid');
        if (fs.existsSync(pidFile)) {
          try {
            process.kill(Number(fs.readFileSync(pidFile, 'utf8')), 'SIGKILL');
          } catch {
            // already gone
          }
        }
      });
      fs.rmSync(pm2Home, { recursive: true, force: true });
    }
    await sim?.close();
    await redis?.stop();
  }, 30_000);

  it(`loses none of ${STREAMS} active SSE streams`, async () => {
    try {
      const before = await jlist();
      expect(before).toHaveLength(2);
      for (const p of before) {
        expect(p.pm2_env.status).toBe('online');
        expect(p.pm2_env.exec_mode).toBe('cluster_mode');
        // kill_timeout follows SHUTDOWN_GRACE_MS from the environment of `pm2 start`.
        expect(p.pm2_env.kill_timeout).toBeGreaterThan(SHUTDOWN_GRACE_MS);
      }

      // The 20 streams of the test, about 4.5 s to 5.5 s each: still running when PM2, after
      // starting a new first worker (1 to 4 s on a busy machine), tells the first old one to stop.
      // Then 10 more, about 6 s to 6.7 s, opened once that has happened: they go to the new
      // worker and to the second old one, which then has streams in flight when its turn comes.
      // Every stream is short enough to end within the drain (SHUTDOWN_GRACE_MS) of its worker.
      const tracked = (name: string, tokens: number): Tracked => ({
        prompt: `pm2 reload ${name} [[tokens=${tokens} delay=25]]`,
        requestId: `pm2-${name.replace(/\s+/g, '-')}-${Date.now()}`,
        events: [],
        statuses: [],
        resumes: 0,
        done: false,
      });
      const streams = Array.from({ length: STREAMS }, (_, i) =>
        tracked(`stream ${i}`, 180 + 2 * i),
      );
      const late = Array.from({ length: 10 }, (_, i) => tracked(`late stream ${i}`, 240 + 3 * i));
      const all = [...streams, ...late];
      const finished = streams.map((t) => follow(base, t));
      await waitFor(
        () => streams.every((t) => t.events.filter((e) => e.event === 'message').length >= 3),
        15_000,
        'every stream to receive events',
      );
      const openAtReload = streams.filter((t) => !t.done).length;

      const reloadStarted = Date.now();
      const reload = pm2(['reload', APP], 60_000);
      // PM2 replaces the workers one after the other. Once the first old one has been told to
      // stop, new connections go to its replacement and to the second old worker.
      const pm2Log = path.join(pm2Home!, 'pm2.log');
      await waitFor(
        () => fs.readFileSync(pm2Log, 'utf8').includes(`Stopping app:${APP} id:_old_0`),
        20_000,
        'PM2 to stop the first old worker',
      ).catch((err: Error) => console.warn(`${err.message}; opening the late streams anyway`));
      // Let it act on the signal (close its listener) before the late streams connect.
      await new Promise((r) => setTimeout(r, 500));
      finished.push(...late.map((t) => follow(base, t)));
      await reload;
      const reloadMs = Date.now() - reloadStarted;
      await Promise.all(finished);

      const after = await jlist();
      expect(after).toHaveLength(2);
      for (const p of after) expect(p.pm2_env.status).toBe('online');
      // Every worker was replaced.
      const oldPids = new Set(before.map((p) => p.pid));
      expect(after.filter((p) => oldPids.has(p.pid))).toEqual([]);

      // What each old worker had in flight when PM2 told it to stop (its "shutting down" line).
      const draining: number[] = [];
      for (const f of fs.readdirSync(path.join(pm2Home!, 'logs'))) {
        if (!f.includes('-out-')) continue;
        for (const line of fs.readFileSync(path.join(pm2Home!, 'logs', f), 'utf8').split('\n')) {
          if (!line.includes('"shutting down"')) continue;
          const entry = JSON.parse(line) as { pid: number; activeStreams: number };
          if (oldPids.has(entry.pid)) draining.push(entry.activeStreams);
        }
      }

      const resumed = all.filter((t) => t.resumes > 0);
      console.log(
        `pm2 reload took ${reloadMs} ms; ${openAtReload}/${STREAMS} streams open when it began, ` +
          `${late.length} more opened during it; the old workers had ${draining.join(' and ')} ` +
          `streams in flight when stopped. ${all.length - resumed.length} of ${all.length} ` +
          `finished in place, ${resumed.length} resumed ` +
          `(${resumed.reduce((n, t) => n + t.resumes, 0)} reconnections).`,
      );
      expect(openAtReload).toBe(STREAMS);
      // Both old workers stopped through the drain, and it had streams to wait for.
      expect(draining).toHaveLength(2);
      expect(draining.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);

      for (const t of all) {
        const where = `${t.requestId} (statuses ${t.statuses.join(',')})`;
        expect({ where, failure: t.failure }).toEqual({ where, failure: undefined });
        expect({ where, last: t.events.at(-1)?.event }).toEqual({ where, last: 'done' });
        // No event lost or doubled across reconnections: seq runs 1, 2, 3... without a gap.
        const seqs = t.events.map((e) => Number(e.id?.slice(e.id.lastIndexOf(':') + 1)));
        expect(seqs).toEqual(seqs.map((_, i) => i + 1));
        expect(text(t.events)).toBe(simulateAnswer(t.prompt).text);
        // One upstream generation per stream: the reload never made the proxy ask twice.
        const calls = sim!.requests.filter(
          (r) => r.path === '/chat/completions' && r.body.messages?.[0]?.content === t.prompt,
        );
        expect({ where, calls: calls.length }).toEqual({ where, calls: 1 });
      }

      // The old workers drained and exited by themselves: PM2 never had to SIGKILL one.
      const daemonLog = fs.readFileSync(pm2Log, 'utf8');
      expect(daemonLog).not.toMatch(/sending SIGKILL/);
      const exits = daemonLog.match(/App \[[^\]]*:_old_\d+\] exited with code \[\d+\]/g) ?? [];
      expect(exits).toHaveLength(2);
      for (const line of exits) expect(line).toMatch(/code \[0\]$/);
    } catch (err) {
      console.error(`PM2 logs:\n${logs()}`);
      throw err;
    }
  }, 90_000);
});
