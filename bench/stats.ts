// bench/stats.ts: the numbers a measurement reduces to, and their formatting.

import type { StreamResult } from './loadgen';

/** One target measured once in one scenario variant (several rounds are merged into one). */
export interface Measurement {
  scenario: string;
  variant: string;
  variantLabel: string;
  target: string;
  rounds: number;
  streams: number;
  ok: number;
  failures: number;
  /** A few failure messages, for the report. */
  failureSamples: string[];
  /** Tokens delivered (expected minus lost). */
  tokens: number;
  tokensLost: number;
  mismatches: number;
  replacementChars: number;
  ttftMs: number[];
  totalMs: number[];
  wallMs: number;
  /** The serving child's CPU time (utime + stime) during the measured run, µs. */
  cpuUs: number;
  simCpuUs: number;
  /**
   * The redis-server's CPU time during the measured runs, µs: only for a target served with the
   * journal in Redis (undefined otherwise). Not in cpuUs: the ratios are the proxy's own.
   */
  redisCpuUs?: number;
  /** read() and write()/writev() system calls of the serving child during the measured runs. */
  readCalls: number;
  writeCalls: number;
  generatorCpuUs: number;
  /** Busy CPU on the machine not spent by the bench's own processes, µs. */
  foreignCpuUs: number;
  /** Per round: RSS before the run (after its warm-up, no forced GC) and its peak during it. */
  idleRss: number[];
  peakRss: number[];
  peakOpen: number[];
  /**
   * Live-memory probes (scenarios with a memoryProbe), one per round: RSS and JS heap (used +
   * external), each after a forced GC (the RSS 200 ms after it), idle and then with `open`
   * streams open.
   */
  probe: Array<{ open: number; idleRss: number; rss: number; idleHeap: number; heap: number }>;
  /** The probe runs' streams are checked too, but kept apart from the timings and CPU. */
  probeStreams: number;
  probeFailures: number;
  probeTokensLost: number;
  /**
   * Per round, in round order (absent in runs before 2026-11-29 12:40): the serving child's CPU
   * time (µs), the tokens delivered and the TTFT p50 (ms). Round i of a proxy target and round i
   * of the baseline ran next to each other, so their ratios show the run-to-run spread.
   */
  perRound?: Array<{
    cpuUs: number;
    tokens: number;
    ttftP50: number;
    ttftCount?: number;
    /**
     * Scenarios of many streams at once: new connections and ms from the first to the last,
     * as the load generator connected them, as the server accepted them, and as the simulator
     * accepted the server's upstream connections.
     */
    connections?: Record<'client' | 'server' | 'sim', { count: number; spanMs: number }>;
  }>;
  /**
   * Per round (absent before 2026-11-29 15:00): the longest event-loop stall (ms) of the serving
   * child and of the load generator during the measured run. A stall delays every stream at once:
   * it is what a lone TTFT tail of seconds is made of.
   */
  stalls?: Array<{ server: number; generator: number }>;
  /** Connections the kernel dropped from a full accept queue during the runs (should be 0). */
  listenDrops: number;
}

export function emptyMeasurement(
  scenario: string,
  variant: string,
  variantLabel: string,
  target: string,
): Measurement {
  return {
    scenario,
    variant,
    variantLabel,
    target,
    rounds: 0,
    streams: 0,
    ok: 0,
    failures: 0,
    failureSamples: [],
    tokens: 0,
    tokensLost: 0,
    mismatches: 0,
    replacementChars: 0,
    ttftMs: [],
    totalMs: [],
    wallMs: 0,
    cpuUs: 0,
    simCpuUs: 0,
    readCalls: 0,
    writeCalls: 0,
    generatorCpuUs: 0,
    foreignCpuUs: 0,
    idleRss: [],
    peakRss: [],
    peakOpen: [],
    probe: [],
    probeStreams: 0,
    probeFailures: 0,
    probeTokensLost: 0,
    listenDrops: 0,
  };
}

export function addProbeResults(m: Measurement, results: StreamResult[]): void {
  for (const r of results) {
    m.probeStreams++;
    if (!r.ok) {
      m.probeFailures++;
      if (m.failureSamples.length < 3 && r.error) m.failureSamples.push(`memory probe: ${r.error}`);
    }
    m.probeTokensLost += r.tokensLost;
  }
}

export function addResults(m: Measurement, results: StreamResult[]): void {
  for (const r of results) {
    m.streams++;
    if (r.ok) m.ok++;
    else {
      m.failures++;
      if (m.failureSamples.length < 3 && r.error) m.failureSamples.push(r.error);
    }
    m.tokens += r.tokens - r.tokensLost;
    m.tokensLost += r.tokensLost;
    if (r.mismatch) m.mismatches++;
    m.replacementChars += r.replacementChars;
    if (!Number.isNaN(r.ttftMs)) m.ttftMs.push(r.ttftMs);
    m.totalMs.push(r.totalMs);
  }
}

/** Memory per open stream is only reported when at least this many were open at once. */
export const MEM_MIN_OPEN = 100;

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i]!;
}

export function median(values: number[]): number {
  return percentile(values, 50);
}

export interface Derived {
  ttftP50: number;
  ttftP99: number;
  totalP50: number;
  totalP99: number;
  tokensPerSec: number;
  cpuUsPerToken: number;
  /**
   * Live memory per open stream, bytes, median over rounds: (RSS with the probe's streams open -
   * idle RSS) / streams open, both after a forced GC. NaN without a memory probe.
   */
  memPerStream: number;
  /**
   * The same for the JS heap (used + external): the part of memPerStream that is JS objects,
   * read in the same turn as the collection (runs before 2026-11-30 08:40 read it on the next
   * message, with that turn's garbage).
   */
  heapPerStream: number;
  probeOpen: number;
  /** (peak RSS during the measured run - idle RSS) / streams open at once, garbage included. */
  peakMemPerStream: number;
  peakRss: number;
  peakOpen: number;
  /** Share of one core used by other work on the machine during the run. */
  foreignCores: number;
}

export function derive(m: Measurement): Derived {
  const peakPerStream = m.peakRss.map((p, i) => (p - m.idleRss[i]!) / Math.max(1, m.peakOpen[i]!));
  const live = m.probe.map((p) => (p.rss - p.idleRss) / Math.max(1, p.open));
  const heap = m.probe.map((p) => (p.heap - p.idleHeap) / Math.max(1, p.open));
  return {
    ttftP50: percentile(m.ttftMs, 50),
    ttftP99: percentile(m.ttftMs, 99),
    totalP50: percentile(m.totalMs, 50),
    totalP99: percentile(m.totalMs, 99),
    tokensPerSec: m.wallMs > 0 ? m.tokens / (m.wallMs / 1000) : NaN,
    cpuUsPerToken: m.tokens > 0 ? m.cpuUs / m.tokens : NaN,
    memPerStream: median(live),
    heapPerStream: median(heap),
    probeOpen: m.probe.length ? Math.min(...m.probe.map((p) => p.open)) : 0,
    peakMemPerStream: median(peakPerStream),
    peakRss: Math.max(...m.peakRss),
    peakOpen: Math.max(...m.peakOpen),
    foreignCores: m.wallMs > 0 ? m.foreignCpuUs / 1000 / m.wallMs : 0,
  };
}

export type RoundFigure = 'cpu' | 'ttft' | 'ttft99' | 'mem' | 'heap';

/**
 * The ratio of `m` to `base` round by round (CPU per token, TTFT p50 or p99, live memory per
 * open stream), or [] when either lacks per-round figures or they ran a different number of
 * rounds. The pooled ratio hides how far runs of the same code move; these show it.
 */
export function roundRatios(m: Measurement, base: Measurement, what: RoundFigure): number[] {
  if (what === 'ttft99') return paired(roundP99s(m), roundP99s(base));
  if (what === 'mem') return paired(roundMem(m), roundMem(base));
  if (what === 'heap') return paired(roundHeap(m), roundHeap(base));
  const a = m.perRound;
  const b = base.perRound;
  if (!a || !b || a.length !== b.length || a.length < 2) return [];
  const value = (r: { cpuUs: number; tokens: number; ttftP50: number }) =>
    what === 'cpu' ? r.cpuUs / Math.max(1, r.tokens) : r.ttftP50;
  return a.map((r, i) => value(r) / value(b[i]!));
}

function paired(a: number[], b: number[]): number[] {
  if (a.length < 2 || a.length !== b.length) return [];
  return a.map((x, i) => x / b[i]!);
}

/**
 * Each round's TTFT p99. A round's first tokens are a contiguous share of `ttftMs`, `ttftCount`
 * long. Runs recorded before ttftCount: an equal share, if every stream had a first token (the
 * rounds run the same streams).
 */
function roundP99s(m: Measurement): number[] {
  const rounds = m.perRound ?? [];
  if (rounds.length < 2) return [];
  let counts = rounds.map((r) => r.ttftCount);
  if (counts.some((c) => c === undefined)) {
    if (m.ttftMs.length !== m.streams || m.streams % rounds.length !== 0) return [];
    counts = rounds.map(() => m.ttftMs.length / rounds.length);
  }
  const out: number[] = [];
  let at = 0;
  for (const c of counts as number[]) {
    out.push(percentile(m.ttftMs.slice(at, at + c), 99));
    at += c;
  }
  return at === m.ttftMs.length ? out : [];
}

/** Each round's live memory per open stream (one memory probe per round). */
function roundMem(m: Measurement): number[] {
  return m.probe.map((p) => (p.rss - p.idleRss) / Math.max(1, p.open));
}

/** Each round's live JS heap per open stream. */
function roundHeap(m: Measurement): number[] {
  return m.probe.map((p) => (p.heap - p.idleHeap) / Math.max(1, p.open));
}

/**
 * A target's CPU as a straight line in the answer's length: `fixedUs` per stream (accepting the
 * request, routing, the upstream request, the log line) plus `perTokenUs` for each token. Fitted
 * through two runs that differ only in tokens per stream (the `cost` scenario); it says which of
 * the two a ratio at some answer length is made of.
 */
export interface CostModel {
  fixedUs: number;
  perTokenUs: number;
}

/** The line through (tokens per stream, CPU per stream) of a short and a long run; NaN if unfit. */
export function costModel(short: Measurement, long: Measurement): CostModel {
  const point = (m: Measurement) => ({
    tokens: m.streams > 0 ? m.tokens / m.streams : NaN,
    cpu: m.streams > 0 ? m.cpuUs / m.streams : NaN,
  });
  const a = point(short);
  const b = point(long);
  if (!(b.tokens > a.tokens)) return { fixedUs: NaN, perTokenUs: NaN };
  const perTokenUs = (b.cpu - a.cpu) / (b.tokens - a.tokens);
  return { fixedUs: a.cpu - perTokenUs * a.tokens, perTokenUs };
}

/** CPU per token the model predicts for answers of `tokens` tokens. */
export function modelCpuPerToken(m: CostModel, tokens: number): number {
  return m.fixedUs / tokens + m.perTokenUs;
}

export const fmt = {
  ms: (v: number) => (Number.isNaN(v) ? '-' : v < 10 ? v.toFixed(2) : v.toFixed(1)),
  us: (v: number) => (Number.isNaN(v) ? '-' : v < 10 ? v.toFixed(2) : v.toFixed(1)),
  int: (v: number) => (Number.isNaN(v) ? '-' : Math.round(v).toLocaleString('en-US')),
  ratio: (v: number) => (Number.isFinite(v) ? `${v.toFixed(2)}x` : '-'),
  kib: (v: number) => (Number.isNaN(v) ? '-' : `${(v / 1024).toFixed(1)} KiB`),
  mib: (v: number) => (Number.isNaN(v) ? '-' : `${(v / 2 ** 20).toFixed(1)} MiB`),
  pct: (v: number) => `${(v * 100).toFixed(0)}%`,
};

/**
 * Per round, the new connections of a many-streams scenario: how many the load generator opened
 * and the ms from the first to the last connecting (client) and being accepted (server), then
 * the server's new upstream connections and the ms over which the simulator accepted them.
 */
export function connectionsText(m: Measurement): string {
  const ms = (x: number) => x.toFixed(0);
  const each = (m.perRound ?? []).flatMap((r) => {
    const c = r.connections;
    if (!c) return [];
    return [
      `${c.client.count} in ${ms(c.client.spanMs)}/${ms(c.server.spanMs)} ms, ` +
        `upstream ${c.sim.count} in ${ms(c.sim.spanMs)} ms`,
    ];
  });
  return each.length ? `new connections, connected/accepted within: ${each.join('; ')}` : '';
}
