// metrics.ts: the Prometheus registry (prom-client). One registry per app, so several apps in
// one process (tests) never share counters. Nothing here runs per token: streams report once,
// when they finish.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { StreamStats } from './stream/chat-stream';

export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'dsp_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly activeStreams = new Gauge({
    name: 'dsp_active_streams',
    help: 'Streams open to the upstream right now',
    registers: [this.registry],
  });
  readonly ttft = new Histogram({
    name: 'dsp_time_to_first_token_seconds',
    help: 'Time from request to the first token',
    labelNames: ['route'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });
  readonly duration = new Histogram({
    name: 'dsp_stream_duration_seconds',
    help: 'Stream duration by outcome',
    labelNames: ['route', 'outcome'] as const,
    buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
    registers: [this.registry],
  });
  readonly tokens = new Counter({
    name: 'dsp_tokens_total',
    help: 'Tokens (answer and reasoning) relayed',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly retries = new Counter({
    name: 'dsp_upstream_retries_total',
    help: 'Upstream retries before the first token',
    registers: [this.registry],
  });
  readonly upstreamErrors = new Counter({
    name: 'dsp_upstream_errors_total',
    help: 'Streams that failed, by error code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly resumes = new Counter({
    name: 'dsp_resumes_total',
    help: 'Resumes: upstream splices (prefix completion) and client reconnects (journal replay)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly disconnects = new Counter({
    name: 'dsp_client_disconnects_total',
    help: 'Clients that left before their stream ended',
    registers: [this.registry],
  });
  readonly rateLimited = new Counter({
    name: 'dsp_rate_limited_total',
    help: 'Requests refused by a rate limit or the per-client stream cap',
    labelNames: ['limit'] as const,
    registers: [this.registry],
  });

  constructor(defaultMetrics = true) {
    if (defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** Once per stream, when it ends. */
  streamFinished(route: string, st: StreamStats, durationMs: number): void {
    if (st.ttftMs !== undefined) this.ttft.observe({ route }, st.ttftMs / 1000);
    this.duration.observe({ route, outcome: st.outcome }, durationMs / 1000);
    if (st.tokens > 0) this.tokens.inc({ route }, st.tokens);
    if (st.retries > 0) this.retries.inc(st.retries);
    if (st.resumes > 0) this.resumes.inc({ kind: 'upstream' }, st.resumes);
    if (st.errorCode) this.upstreamErrors.inc({ code: st.errorCode });
    if (st.outcome === 'client_aborted') this.disconnects.inc();
  }
}
