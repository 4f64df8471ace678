// server.ts: the only listener. config -> (simulator when there is no key) -> app -> listen,
// then graceful shutdown on SIGTERM/SIGINT: readiness fails, new streams are refused, active
// ones get SHUTDOWN_GRACE_MS to finish, the rest end with an in-band `shutting_down` error.

import cluster from 'node:cluster';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import dotenv from 'dotenv';
import { createApp, metricsHandler } from './app';
import { ConfigError, loadConfig, type Config } from './config';
import { createHttpServer } from './http-server';
import { createLogger } from './log';
import { startSimulator, type Simulator } from './simulator/server';

/** Connections waiting to be accepted (docs/operations.md, "Bursts of connections"). */
const LISTEN_BACKLOG = 4096;

/** The longest the shutdown waits for the journal (Redis) to take its last writes. */
const JOURNAL_CLOSE_MS = 2000;

async function main(): Promise<void> {
  if (fs.existsSync('.env')) dotenv.config({ quiet: true } as dotenv.DotenvConfigOptions);
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`deepseek-stream-proxy: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const log = createLogger(config.logLevel);

  let simulator: Simulator | undefined;
  if (config.useSimulator) {
    simulator = await startSimulator({ tokenDelayMs: config.simulatorTokenDelayMs });
    config = Object.freeze({ ...config, deepseekBaseUrl: simulator.url });
    log.warn(
      { simulator: simulator.url },
      'DEEPSEEK_API_KEY is not set: answers come from the built-in DeepSeek simulator, not DeepSeek',
    );
  }

  if (cluster.isWorker && !config.redisUrl) {
    log.warn(
      'a cluster worker without REDIS_URL: rate limits, stream caps, replay protection, ' +
        'X-Request-ID idempotency and resume count per worker (docs/operations.md, PM2)',
    );
  }
  const app = createApp(config, { logger: log });
  const server = createHttpServer(
    app,
    config.requestTimeoutMs,
    config.tlsCertFile && config.tlsKeyFile
      ? { cert: fs.readFileSync(config.tlsCertFile), key: fs.readFileSync(config.tlsKeyFile) }
      : undefined,
  );

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // A burst of connections larger than Node's default backlog (511) lost SYNs, each retried by
    // the client's kernel a second later; the kernel caps this at net.core.somaxconn.
    server.listen({ port: config.port, host: config.host, backlog: LISTEN_BACKLOG }, resolve);
  });
  const port = (server.address() as AddressInfo).port;
  // Under PM2 every worker shares PORT; METRICS_PORT (incremented per worker) gives each its own
  // /metrics so Prometheus can scrape them all.
  let metricsServer: http.Server | undefined;
  if (config.metricsPort !== undefined) {
    const handler = metricsHandler(app.metrics);
    metricsServer = http.createServer((req, res) => {
      if (req.url === '/metrics') {
        handler(req as never, res as never).catch((err: unknown) => {
          log.error({ err: err instanceof Error ? err.message : String(err) }, 'metrics failed');
          if (!res.headersSent) res.writeHead(500);
          res.end();
        });
      } else res.writeHead(404).end();
    });
    // A worker that cannot serve its metrics must not look healthy: the same as a taken PORT.
    const metrics = metricsServer;
    await new Promise<void>((resolve, reject) => {
      metrics.once('error', (err) => reject(new Error(`METRICS_PORT: ${err.message}`)));
      metrics.listen(config.metricsPort, config.host, resolve);
    });
    metrics.on('error', (err) => log.error({ err: err.message }, 'metrics listener failed'));
  }
  log.info({ port, host: config.host, simulator: Boolean(simulator) }, 'listening');
  process.send?.('ready'); // PM2 wait_ready

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) {
      // A second Ctrl-C: the person at the terminal does not want to wait for the drain.
      if (signal === 'SIGINT') {
        log.warn('second SIGINT: exiting without waiting for the drain');
        process.exit(130);
      }
      return;
    }
    stopping = true;
    log.info({ signal, activeStreams: app.service.active.size }, 'shutting down');
    const deadline = Date.now() + config.shutdownGraceMs;
    server.close();
    await app.service.drain(config.shutdownGraceMs);
    // Requests that were not streams yet (held by accept-first, waiting on Redis in a guard or
    // for the journal claim) answer 503 shutting_down when their wait ends: let them, within the
    // grace (at least 1 s). Held ones are not the app's yet, so they are let in first (with the
    // listener closed, the next turn accepts nothing and lets them go).
    const answerBy = Math.max(deadline, Date.now() + 1000);
    await server.acceptFirst.idle(answerBy);
    await app.requestsAnswered(answerBy);
    // Give the in-band errors a moment to flush, then drop idle keep-alive sockets.
    await new Promise((r) => setTimeout(r, 100));
    server.closeAllConnections();
    // The journal's last writes (the handed-off streams' state) must reach Redis before the
    // process exits, or another worker never takes those streams over; a Redis that does not
    // answer gets JOURNAL_CLOSE_MS.
    await Promise.race([app.close(), new Promise((r) => setTimeout(r, JOURNAL_CLOSE_MS).unref())]);
    await simulator?.close();
    // Scrapes during the drain still see this worker (the streams that ended in it included).
    metricsServer?.close();
    log.info('stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('unhandledRejection', (err) => {
    log.error(
      { err: err instanceof Error ? { message: err.message, stack: err.stack } : String(err) },
      'unhandled rejection',
    );
  });
}

main().catch((err: unknown) => {
  // A listener that cannot bind (EADDRINUSE) must not leave a worker that looks alive.
  process.stderr.write(
    `deepseek-stream-proxy: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  process.exit(1);
});
