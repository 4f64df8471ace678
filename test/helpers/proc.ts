// test/helpers/proc.ts: run src/server.ts as a child process (as `npm start` would, minus the
// build) and find the port it listens on; or any other script of the repository under tsx.

import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import path from 'node:path';
import { waitFor } from './stack';

export const root = path.resolve(__dirname, '../..');
export const tsx = path.join(root, 'node_modules/.bin/tsx');

export interface ServerProc {
  child: ChildProcess;
  out: string[];
  exit: Promise<number | null>;
  url(): string;
  ready(): Promise<string>;
  stop(): Promise<number | null>;
}

/** A TypeScript file of the repository run under tsx, with its stdout and stderr collected. */
export function spawnTsx(
  script: string,
  env: Record<string, string> = {},
): Pick<ServerProc, 'child' | 'out' | 'exit'> {
  const child = spawn(tsx, [script], {
    cwd: root,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: string[] = [];
  child.stdout!.on('data', (b: Buffer) => out.push(b.toString()));
  child.stderr!.on('data', (b: Buffer) => out.push(b.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, out, exit };
}

export function startServerProcess(env: Record<string, string>): ServerProc {
  const { child, out, exit } = spawnTsx('src/server.ts', env);
  const port = (): number | undefined => {
    for (const line of out.join('').split('\n')) {
      if (line.includes('"listening"')) return (JSON.parse(line) as { port: number }).port;
    }
    return undefined;
  };
  const url = () => `http://127.0.0.1:${port()}`;
  return {
    child,
    out,
    exit,
    url,
    async ready() {
      await waitFor(() => port() !== undefined, 20_000, 'server listening');
      return url();
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exit;
    },
  };
}

export interface CliRun {
  child: ChildProcessWithoutNullStreams;
  code: Promise<number | null>;
  stdout: () => string;
  stderr: () => string;
}

/**
 * The `deepseek-stream` CLI (src/cli/main.ts) as a child process. `stdin`: text to send and
 * close, or 'open' to leave it open (a pipe that never ends). `deadlineMs`: killed after that
 * long (then `code` is null), so a CLI that hangs fails its test instead of the whole run.
 */
export function runCli(
  args: string[],
  env: Record<string, string> = {},
  stdin: string | 'open' = '',
  deadlineMs = 25_000,
): CliRun {
  const child = spawn(tsx, ['src/cli/main.ts', ...args], {
    cwd: root,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  child.stdout.on('error', () => undefined); // a test may close it early
  child.stdin.on('error', () => undefined);
  if (stdin !== 'open') child.stdin.end(stdin);
  const deadline = setTimeout(() => child.kill('SIGKILL'), deadlineMs);
  return {
    child,
    code: new Promise((r) =>
      child.on('exit', (c) => {
        clearTimeout(deadline);
        child.stdin.destroy();
        r(c);
      }),
    ),
    stdout: () => out,
    stderr: () => err,
  };
}
