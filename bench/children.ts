// bench/children.ts: start a bench child (simulator, proxy, baseline) as its own Node process and
// talk to it. Children run the JavaScript bench/build.ts compiled (`node script.js`, no loader), so
// the pid we spawn IS the process that serves, and its CPU is only ever measured as a delta after
// it said `ready`.

import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { ChildMessage, ParentMessage } from './child-ipc';

export interface Child {
  name: string;
  pid: number;
  port: number;
  url: string;
  proc: ChildProcess;
  /**
   * Run the collector twice (children start with --expose-gc), then V8 heap used + external
   * memory, bytes, read right after it.
   */
  gc(): Promise<number>;
  /** The child's monotonic clock, microseconds. */
  now(): Promise<number>;
  /** The longest its event loop was blocked (ms) since the last call. */
  stall(): Promise<number>;
  /** Connections accepted since the last call, and ms from the first to the last of them. */
  accepts(): Promise<{ count: number; spanMs: number }>;
  /** Ask the child to exit cleanly (so --cpu-prof writes); kill it if it does not. */
  stop(): Promise<void>;
  /** The last lines the child printed, for error messages. */
  output(): string;
}

export interface ChildOptions {
  env?: Record<string, string>;
  /** Extra node flags, such as --cpu-prof. */
  nodeArgs?: string[];
  /** Print the child's output as it comes (prefixed with its name). */
  echo?: boolean;
}

/** Start `script` (an absolute path to compiled JavaScript) and wait for its `ready`. */
export async function startChild(
  name: string,
  script: string,
  opts: ChildOptions = {},
): Promise<Child> {
  const proc = spawn(process.execPath, ['--expose-gc', ...(opts.nodeArgs ?? []), script], {
    cwd: path.resolve(__dirname, '..'),
    env: { ...process.env, NODE_ENV: 'production', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const lines: string[] = [];
  const keep = (b: Buffer) => {
    const text = b.toString();
    for (const line of text.split('\n')) if (line) lines.push(line);
    if (lines.length > 50) lines.splice(0, lines.length - 50);
    if (opts.echo) process.stderr.write(text.replace(/^(?=.)/gm, `[${name}] `));
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);

  let nextId = 1;
  const waiting = new Map<number, (v: number) => void>();
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    proc.on('exit', () => {
      exited = true;
      for (const w of waiting.values()) w(NaN);
      waiting.clear();
      resolve();
    }),
  );
  const ready = new Promise<{ port: number; pid: number }>((resolve, reject) => {
    proc.on('message', (raw: unknown) => {
      const m = raw as ChildMessage;
      if (m.type === 'ready') resolve({ port: m.port, pid: m.pid });
      else if (m.type === 'reply') {
        waiting.get(m.id)?.(m.value);
        waiting.delete(m.id);
      }
    });
    void exit.then(() =>
      reject(new Error(`${name} exited before it was ready:\n${lines.join('\n')}`)),
    );
    setTimeout(
      () => reject(new Error(`${name} was not ready within 60 s:\n${lines.join('\n')}`)),
      60_000,
    ).unref();
  });
  const { port, pid } = await ready;

  const ask = (cmd: ParentMessage['cmd']): Promise<number> =>
    new Promise<number>((resolve) => {
      if (exited || !proc.connected) return resolve(NaN);
      const id = nextId++;
      waiting.set(id, resolve);
      proc.send({ id, cmd } satisfies ParentMessage);
    });

  return {
    name,
    pid,
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    gc: () => ask('gc'),
    now: () => ask('now'),
    stall: () => ask('stall'),
    async accepts() {
      const count = await ask('acceptCount');
      return { count, spanMs: await ask('acceptSpan') };
    },
    async stop() {
      if (exited) return;
      void ask('exit');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      await exit;
      clearTimeout(timer);
    },
    output: () => lines.join('\n'),
  };
}
