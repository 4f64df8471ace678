// ecosystem.config.js: PM2 cluster mode; `pm2 reload` replaces workers without losing a stream.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

// The server reads ./.env at start-up, where a variable already in the environment (even empty)
// wins; read it the same way here, without changing process.env, so the numbers below agree with
// what the workers will use. Empty means unset, as in the server's config.
function setting(name) {
  let value = process.env[name];
  if (value === undefined) {
    try {
      value = require('dotenv').parse(fs.readFileSync(path.join(__dirname, '.env')))[name];
    } catch {
      value = undefined; // no .env (or dotenv not installed): defaults apply
    }
  }
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

// SHUTDOWN_GRACE_MS as the server reads it (default 25000). A malformed value falls back to the
// default here; the server itself refuses it at start-up with an error naming the variable.
const raw = setting('SHUTDOWN_GRACE_MS');
const shutdownGraceMs = raw !== undefined && /^\d+$/.test(raw) ? Number(raw) : 25000;

// After the drain the worker still writes the handed-off streams' state to Redis, flushes the
// in-band errors (100 ms), closes its connections and exits: 5 s is ample for that.
const EXIT_MARGIN_MS = 5000;

// PM2_INSTANCES: a worker count (a negative number = all cores minus that many); default every core.
const instancesRaw = setting('PM2_INSTANCES');
const instances =
  instancesRaw !== undefined && /^-?\d+$/.test(instancesRaw) ? Number(instancesRaw) : 'max';

const metricsPort = setting('METRICS_PORT');

module.exports = {
  apps: [
    {
      name: 'deepseek-stream-proxy',
      // The compiled server (`npm run build`); cwd pinned so dist/ and .env resolve wherever
      // pm2 is run from.
      script: 'dist/server.js',
      cwd: __dirname,
      // Cluster mode: every worker accepts on the same PORT (PM2's master hands out connections),
      // and `pm2 reload` replaces workers one at a time, so some worker is always accepting.
      exec_mode: 'cluster',
      instances,
      // Count a new worker as up only when it sends process.send('ready') after listen() (see
      // src/server.ts); only then does PM2 stop the old worker it replaces.
      wait_ready: true,
      // How long PM2 waits for that 'ready'. After it PM2 goes on with the reload regardless, so
      // it is generous for a cold start on a busy host, but bounded.
      listen_timeout: 15000,
      // The old worker gets SIGINT, stops accepting and lets its streams finish for up to
      // SHUTDOWN_GRACE_MS; streams still running then are handed off through the Redis journal
      // (or end with a `shutting_down` error). PM2 sends SIGKILL after kill_timeout, so it must
      // outlast that drain, or a worker dies mid-drain and its clients see a cut without an end.
      kill_timeout: shutdownGraceMs + EXIT_MARGIN_MS,
      // A worker that cannot start (a bad setting exits with code 1) is retried with growing
      // delays instead of in a tight loop.
      exp_backoff_restart_delay: 100,
      // METRICS_PORT (optional): every worker serves /metrics on its own port instead of PORT, so
      // Prometheus can scrape each worker. increment_var gives worker 0 METRICS_PORT, worker 1
      // METRICS_PORT+1, and so on. It is set only when METRICS_PORT is: without a base value PM2
      // would inject 0, 1, 2... and move /metrics off the main port. The base value goes into
      // env below (also when it comes from .env), because PM2 increments from there.
      ...(metricsPort !== undefined ? { increment_var: 'METRICS_PORT' } : {}),
      // Defaults for the workers; variables set in the environment of `pm2 start` win.
      env: {
        NODE_ENV: process.env.NODE_ENV || 'production',
        ...(metricsPort !== undefined ? { METRICS_PORT: metricsPort } : {}),
      },
    },
  ],
};
