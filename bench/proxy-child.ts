// bench/proxy-child.ts: the proxy under test in its own process, so its CPU time and memory can be
// read from /proc. createApp() and createHttpServer() as server.ts builds them, pointed at the
// simulator, with the limits that would refuse a load test lifted (rate limit, per-client cap,
// total cap, upstream pool) and heartbeats out of the way. BENCH_UPSTREAM is the simulator's URL;
// BENCH_PROXY_CONFIG (JSON) overrides any Config field (`npm run bench -- --set
// upstreamMaxSockets=256`); the second proxy, for the `sse-redis` target, is this same child given
// a redisUrl there.

import type { AddressInfo } from 'node:net';
import { createApp } from '../src/app';
import { testConfig, type Config } from '../src/config';
import { createHttpServer } from '../src/http-server';
import { serveParent } from './child-ipc';

async function main(): Promise<void> {
  const upstream = process.env.BENCH_UPSTREAM;
  if (!upstream) throw new Error('BENCH_UPSTREAM is not set');
  const overrides = JSON.parse(process.env.BENCH_PROXY_CONFIG ?? '{}') as Partial<Config>;
  const config = testConfig({
    deepseekBaseUrl: upstream,
    deepseekApiKey: 'sk-bench',
    useSimulator: false,
    logLevel: 'warn',
    // One client (the load generator, one IP) opens thousands of streams.
    rateLimitMax: 0,
    maxStreamsPerClient: 0,
    maxConcurrentStreams: 5000,
    // A pool smaller than the streams open at once queues the rest behind whole streams (the
    // default was 256 until 03:52 on 2026-11-25); see docs/BENCHMARKS.md, "What is measured".
    upstreamMaxSockets: 5000,
    heartbeatMs: 3_600_000,
    ...overrides,
  });
  const app = createApp(config);
  // The server server.ts runs (its request classes, timeouts and clientError answer).
  const server = createHttpServer(app, config.requestTimeoutMs);
  await new Promise<void>((resolve) =>
    // A backlog for 1000 connections arriving at once (Node's default is 511).
    server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve),
  );
  serveParent(
    (server.address() as AddressInfo).port,
    () => {
      void app.close();
      server.closeAllConnections();
      server.close();
    },
    server,
  );
}

void main();
