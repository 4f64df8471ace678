// test/helpers/stack.ts: a simulator and a proxy on loopback port 0, plus a raw HTTP client that
// keeps what a test needs to see: status, headers, every body chunk, and whether the body ended
// cleanly (a cut text stream must not look complete).

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { createApp, type ProxyApp } from '../../src/app';
import { testConfig, type Config } from '../../src/config';
import { createHttpServer } from '../../src/http-server';
import { createLogger } from '../../src/log';
import { startSimulator, type Simulator, type SimulatorOptions } from '../../src/simulator/server';

export const TEST_KEY = 'sk-test-9f8e7d6c5b4a39281706';

export interface Stack {
  sim: Simulator;
  app: ProxyApp;
  url: string;
  config: Config;
  logs: string[];
  close(): Promise<void>;
}

export async function startStack(
  overrides: Partial<Config> = {},
  simOptions: SimulatorOptions = {},
): Promise<Stack> {
  const sim = await startSimulator(simOptions);
  const logs: string[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(chunk.toString());
      cb();
    },
  });
  const config = testConfig({
    deepseekBaseUrl: sim.url,
    deepseekApiKey: TEST_KEY,
    useSimulator: false,
    retryBaseDelayMs: 1,
    retryMaxDelayMs: 10,
    // Tests of resume set their own grace; elsewhere a client that leaves stops the upstream now.
    resumeGraceMs: 0,
    // One loopback client sends every test request: fairness limits have their own tests.
    rateLimitMax: 0,
    maxStreamsPerClient: 0,
    ...overrides,
  });
  const app = createApp(config, { logger: createLogger('info', dest) });
  const server = createHttpServer(app, config.requestTimeoutMs); // as src/server.ts does
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    sim,
    app,
    url,
    config,
    logs,
    async close() {
      app.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await sim.close();
    },
  };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  chunks: Buffer[];
  /** True when the body ended with its terminating chunk; false when the connection was cut. */
  complete: boolean;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** Called with each body chunk; return 'abort' to hang up. */
  onChunk?: (chunk: Buffer, soFar: string) => void | 'abort';
}

export function request(url: string, opts: RequestOptions = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: opts.method ?? 'GET',
      headers: opts.headers,
      agent: false,
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let soFar = '';
      let finished = false;
      const done = (complete: boolean) => {
        if (finished) return;
        finished = true;
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          chunks,
          complete,
        });
      };
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        if (opts.onChunk) {
          soFar += c.toString('utf8');
          if (opts.onChunk(c, soFar) === 'abort') {
            req.destroy();
            done(false);
          }
        }
      });
      res.on('end', () => done(res.complete));
      res.on('error', () => done(false));
      res.on('close', () => done(res.complete));
    });
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  });
}

export interface SseEvent {
  event: string;
  id: string | undefined;
  data: string;
}

/** A small, strict SSE reader for assertions (LF endings, as the proxy writes). */
export function parseSse(text: string): {
  events: SseEvent[];
  retry: number | undefined;
  comments: string[];
} {
  const events: SseEvent[] = [];
  const comments: string[] = [];
  let retry: number | undefined;
  for (const block of text.split('\n\n')) {
    if (block === '') continue;
    let event = 'message';
    let id: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line.slice(1).trim());
      else if (line.startsWith('retry: ')) retry = Number(line.slice(7));
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('id: ')) id = line.slice(4);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
      else throw new Error(`unexpected SSE line: ${JSON.stringify(line)}`);
    }
    if (data.length > 0) events.push({ event, id, data: data.join('\n') });
  }
  return { events, retry, comments };
}

/** The answer text carried by SSE `message` events. */
export function sseText(events: SseEvent[]): string {
  return events
    .filter((e) => e.event === 'message')
    .map((e) => (JSON.parse(e.data) as { content: string }).content)
    .join('');
}

export function q(prompt: string, extra = ''): string {
  return `/chat-stream?prompt=${encodeURIComponent(prompt)}${extra}`;
}

export async function waitFor(
  cond: () => boolean,
  timeoutMs = 5000,
  what = 'condition',
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
