// metrics.ts: the Prometheus registry (prom-client). One registry per app, so several apps in
// one process (tests) never share counters. Nothing here runs per token: streams report once,
// when they finish, and those reports are applied in batches (see streamFinished).

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Outcome, StreamStats } from './stream/chat-stream';

/** What a finished stream reports, kept until the next batch. */
interface Finished {
  route: string;
  outcome: Outcome;
  ttftMs: number | undefined;
  durationMs: number;
  tokens: number;
  retries: number;
  resumes: number;
  errorCode: string | undefined;
}

/** Reports kept before they are applied at once (a scrape applies them too). */
const BATCH = 128;

export class Metrics {
  readonly registry = new Registry();
  private finished: Finished[] = [];
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
    // The first of the stream metrics in the registry: a scrape applies the waiting reports
    // here, before any of them is read.
    collect: () => this.applyFinished(),
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
    help: 'Streams stopped because their client left and nobody resumed within the grace',
    registers: [this.registry],
  });
  readonly rateLimited = new Counter({
    name: 'dsp_rate_limited_total',
    help: 'Requests refused by a rate limit or the per-client stream cap',
    labelNames: ['limit'] as const,
    registers: [this.registry],
  });

  /** What accept-first (src/accept-first.ts) held, counted when scraped: nothing per request. */
  private bursts: { waited: number; dropped: number } | undefined;
  private burstsSeen = { waited: 0, dropped: 0 };
  readonly heldRequests = new Counter({
    name: 'dsp_burst_held_requests_total',
    help:
      'Requests held while a burst of new connections was accepted, by what became of them ' +
      '(served, or dropped: their client left while they waited)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
    collect: () => {
      const b = this.bursts;
      if (!b) return;
      const seen = this.burstsSeen;
      if (b.waited > seen.waited) {
        this.heldRequests.inc({ outcome: 'served' }, b.waited - seen.waited);
      }
      if (b.dropped > seen.dropped) {
        this.heldRequests.inc({ outcome: 'dropped' }, b.dropped - seen.dropped);
      }
      this.burstsSeen = { waited: b.waited, dropped: b.dropped };
    },
  });

  /** The server's accept-first queue, read when /metrics is scraped. */
  watchBursts(counts: { waited: number; dropped: number }): void {
    this.bursts = counts;
    this.burstsSeen = { waited: counts.waited, dropped: counts.dropped };
  }

  constructor(defaultMetrics = true) {
    if (defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * Once per stream, when it ends. prom-client's observe() costs 0.7 µs in a loop but about 30 µs
   * per stream when called once between two streams' work (cold caches: it was 2% of the proxy's
   * CPU in the profile), so reports wait here and are applied in batches of BATCH, or when
   * /metrics is scraped: a scrape always sees every stream that finished before it.
   */
  streamFinished(route: string, st: StreamStats, durationMs: number): void {
    this.finished.push({
      route,
      outcome: st.outcome,
      ttftMs: st.ttftMs,
      durationMs,
      tokens: st.tokens,
      retries: st.retries,
      resumes: st.resumes,
      errorCode: st.errorCode,
    });
    if (this.finished.length >= BATCH) this.applyFinished();
  }

  private applyFinished(): void {
    const list = this.finished;
    if (list.length === 0) return;
    this.finished = [];
    for (const f of list) {
      const route = f.route;
      if (f.ttftMs !== undefined) this.ttft.observe({ route }, f.ttftMs / 1000);
      this.duration.observe({ route, outcome: f.outcome }, f.durationMs / 1000);
      if (f.tokens > 0) this.tokens.inc({ route }, f.tokens);
      if (f.retries > 0) this.retries.inc(f.retries);
      if (f.resumes > 0) this.resumes.inc({ kind: 'upstream' }, f.resumes);
      if (f.errorCode) this.upstreamErrors.inc({ code: f.errorCode });
      if (f.outcome === 'client_aborted') this.disconnects.inc();
    }
  }
}
