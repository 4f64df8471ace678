// bench/report.ts: docs/BENCHMARKS.md. The measured parts are generated between marker comments;
// everything outside the markers is hand-written and kept as is, so the analysis survives a re-run.
// The profile block is only replaced by a run with --profile (it names its own date and command).

import fs from 'node:fs';
import type { WindowProfile } from './profile';
import type { Machine } from './proc';
import type { Scenario, Target } from './scenarios';
import {
  connectionsText,
  costModel,
  derive,
  fmt,
  MEM_MIN_OPEN,
  modelCpuPerToken,
  roundRatios,
  type Derived,
  type Measurement,
  type RoundFigure,
} from './stats';

export interface RunInfo {
  command: string;
  date: string;
  machine: Machine;
  quick: boolean;
  rounds: number;
  overrides: Record<string, unknown>;
  durationMs: number;
  measuredMs: number;
  loadBefore: number;
  loadAfter: number;
  notes: string[];
  scenarios: Scenario[];
  targets: Target[];
  measurements: Measurement[];
  profile?: { files: string[]; windows: WindowProfile[]; durationMs: number };
  /** Which src/ was measured (the tree changes; there is no commit to name). */
  source?: { hash: string; newest: string; newestAt: string };
}

const RESULTS = ['<!-- bench:results:begin -->', '<!-- bench:results:end -->'] as const;
const PROFILE = ['<!-- bench:profile:begin -->', '<!-- bench:profile:end -->'] as const;

const TEMPLATE = `# Benchmarks

How much the proxy costs on top of the cheapest possible Node relay, measured by \`npm run bench\`
(\`bench/run.ts\`).

${RESULTS[0]}
${RESULTS[1]}

## Profile

${PROFILE[0]}
_Not profiled yet: run \`npm run bench -- --profile\`._
${PROFILE[1]}
`;

function replaceBlock(doc: string, [begin, end]: readonly [string, string], body: string): string {
  const a = doc.indexOf(begin);
  const b = doc.indexOf(end);
  if (a === -1 || b === -1 || b < a) return `${doc.trimEnd()}\n\n${begin}\n${body}\n${end}\n`;
  return `${doc.slice(0, a + begin.length)}\n${body}\n${doc.slice(b)}`;
}

export function writeReport(file: string, info: RunInfo): void {
  let doc = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : TEMPLATE;
  doc = replaceBlock(doc, RESULTS, results(info));
  if (info.profile) doc = replaceBlock(doc, PROFILE, profileBlock(info));
  fs.writeFileSync(file, doc);
}

function table(head: string[], rows: string[][]): string {
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`);
  return lines.join('\n');
}

function find(info: RunInfo, scenario: string, target: string, variant?: string) {
  return info.measurements.find(
    (m) =>
      m.scenario === scenario &&
      m.target === target &&
      (variant === undefined || m.variant === variant),
  );
}

function results(info: RunInfo): string {
  const m = info.machine;
  const out: string[] = [];
  const measured = (server: Target['server']) =>
    info.targets.filter(
      (t) => t.server === server && info.measurements.some((x) => x.target === t.key),
    );
  const proxyTargets = measured('proxy');
  // The proxy journaling to Redis has a target of its own (CPU only): a column after the others.
  const redisTargets = measured('proxy-redis');
  const foreign = Math.max(0, ...info.measurements.map((x) => derive(x).foreignCores));

  out.push('## Last run');
  out.push('');
  out.push(
    table(
      ['', ''],
      [
        ['date', info.date],
        [
          'command',
          `\`${info.command}\`${info.quick ? ' (quick: small counts, a smoke run)' : ''}`,
        ],
        [
          'duration',
          `${(info.durationMs / 1000).toFixed(0)} s (measuring ${(info.measuredMs / 1000).toFixed(0)} s` +
            (info.profile ? `, profiling ${(info.profile.durationMs / 1000).toFixed(0)} s)` : ')'),
        ],
        ['machine', `${m.nproc} CPUs (${m.cpuModel}), ${m.ramGiB} GiB RAM, ${m.kernel}`],
        ['Node', m.node],
        [
          'code measured',
          info.source
            ? `src/ sha256 \`${info.source.hash}\` (newest file ${info.source.newest}, ${info.source.newestAt})`
            : 'unknown',
        ],
        ['open files (`ulimit -n`)', String(m.openFiles ?? 'unknown')],
        [
          'other load',
          `load average ${info.loadBefore.toFixed(2)} before, ${info.loadAfter.toFixed(2)} after; ` +
            `CPU used by other processes during a measurement: up to ${foreign.toFixed(2)} of a core`,
        ],
        ['rounds per target', String(info.rounds)],
        [
          'proxy config overrides',
          Object.keys(info.overrides).length ? `\`${JSON.stringify(info.overrides)}\`` : 'none',
        ],
      ],
    ),
  );

  // ---- the targets ------------------------------------------------------------------------
  out.push('');
  out.push('## Against the targets');
  out.push('');
  out.push(
    'Ratios are proxy / bare Node pipe, measured in the same run on the same simulator. Lower is better.',
  );
  out.push('');
  const ratio = (
    scenario: string,
    target: string,
    pick: (d: ReturnType<typeof derive>) => number,
    limit: number,
    perRound?: RoundFigure,
  ): string => {
    const p = find(info, scenario, target);
    const b = find(info, scenario, 'baseline', p?.variant);
    if (!p || !b) return 'not run';
    const r = pick(derive(p)) / pick(derive(b));
    const each = perRound ? roundRatios(p, b, perRound) : [];
    const spread = each.length ? ` (rounds: ${each.map((x) => x.toFixed(2)).join(', ')})` : '';
    return `${fmt.ratio(r)} ${r <= limit ? 'pass' : '**FAIL**'}${spread}`;
  };
  const framingOk = (target: string): string => {
    const ms = info.measurements.filter((x) => x.scenario === 'framing' && x.target === target);
    if (ms.length === 0) return 'not run';
    const lost = ms.reduce((s, x) => s + x.tokensLost, 0);
    const fffd = ms.reduce((s, x) => s + x.replacementChars, 0);
    const bad = ms.reduce((s, x) => s + x.mismatches + x.failures, 0);
    return `${lost} lost, ${fffd} U+FFFD, ${bad} bad streams ${lost + fffd + bad === 0 ? 'pass' : '**FAIL**'}`;
  };
  const checks: Array<[string, string, (t: string) => string]> = [
    [
      'CPU per token (throughput)',
      '<= 1.5x (goal 1.2x)',
      (t: string) => ratio('throughput', t, (d) => d.cpuUsPerToken, 1.5, 'cpu'),
    ],
    [
      'TTFT p50 (latency)',
      '<= 1.3x',
      (t: string) => ratio('latency', t, (d) => d.ttftP50, 1.3, 'ttft'),
    ],
    [
      'TTFT p99 (many slow streams)',
      '<= 1.2x',
      (t: string) => ratio('slow', t, (d) => d.ttftP99, 1.2, 'ttft99'),
    ],
    [
      'total time p99 (many slow streams)',
      '<= 1.2x',
      (t: string) => ratio('slow', t, (d) => d.totalP99, 1.2),
    ],
    [
      'live memory per open stream: JS heap (many slow streams)',
      '<= 1.2x',
      (t: string) => ratio('slow', t, (d) => d.heapPerStream, 1.2, 'heap'),
    ],
    [
      'live memory per open stream: RSS (many slow streams)',
      '<= 1.2x',
      (t: string) => ratio('slow', t, (d) => d.memPerStream, 1.2, 'mem'),
    ],
    ['framing: tokens lost, U+FFFD', '0, 0', framingOk],
  ];
  // Each check applies to one kind of server; the other columns say n/a.
  const rows: string[][] = checks.map(([name, target, f]) => [
    name,
    target,
    ...proxyTargets.map((t) => f(t.key)),
    ...redisTargets.map(() => 'n/a'),
  ]);
  rows.push([
    'CPU per token with the Redis journal (throughput)',
    '<= 2x',
    ...proxyTargets.map(() => (redisTargets.length ? 'n/a' : 'not run')),
    ...redisTargets.map((t) => ratio('throughput', t.key, (d) => d.cpuUsPerToken, 2, 'cpu')),
  ]);
  out.push(
    table(['check', 'target', ...[...proxyTargets, ...redisTargets].map((t) => t.label)], rows),
  );
  out.push('');
  out.push(
    'The text-mode rows compare against the same baseline, which relays the SSE bytes: a text ' +
      'stream carries fewer bytes than the SSE it is made from, so it is compared with the cheaper ' +
      'of the two things a pipe could do, not with a text pipe (there is none: text needs parsing).',
  );
  out.push('');
  out.push(
    'The Redis journal row is the SSE request served by a second proxy process whose resume ' +
      'journal is in a redis-server the bench starts on loopback (no persistence, emptied before ' +
      "every measured run). Its ratio is that proxy's own CPU, as for the other rows; the " +
      "redis-server's CPU is not in it, but shown as `redis` in the throughput table's " +
      '"CPU elsewhere" line.',
  );

  // ---- per scenario -----------------------------------------------------------------------
  for (const sc of info.scenarios) {
    const ms = info.measurements.filter((x) => x.scenario === sc.key);
    if (ms.length === 0) continue;
    out.push('');
    out.push(`## ${sc.title}`);
    out.push('');
    out.push(`${sc.what[0]!.toUpperCase()}${sc.what.slice(1)}.`);
    const framing = sc.key === 'framing';
    const rows: string[][] = [];
    let cols: Column[] = [];
    for (const v of sc.variants) {
      const vs = ms.filter((x) => x.variant === v.key);
      if (vs.length === 0) continue;
      const base = vs.find((x) => x.target === 'baseline');
      cols = columns(vs, framing);
      if (!framing) {
        out.push('');
        out.push(
          `**${v.label}** (simulator directives \`[[tokens=${v.tokens}${v.directives ? ' ' + v.directives : ''}]]\`)`,
        );
        out.push('');
      }
      for (const x of vs) {
        const label = info.targets.find((t) => t.key === x.target)?.label ?? x.target;
        const cells = cols.map((c) => c.cell(x, base));
        rows.push(framing ? [v.label, label, ...cells] : [label, ...cells]);
      }
      if (!framing) {
        out.push(table(['target', ...cols.map((c) => c.head)], rows.splice(0)));
        out.push('');
        out.push(`<sub>${context(vs)}</sub>`);
      }
    }
    if (sc.key === 'cost') out.push(...costSection(info, ms));
    if (framing && rows.length) {
      out.push('');
      out.push(
        `${sc.variants[0]!.streams} streams of ${sc.variants[0]!.tokens} tokens per \`frag\` variant, ` +
          `${sc.variants.at(-1)!.streams} of ${sc.variants.at(-1)!.tokens} coalesced.`,
      );
      out.push('');
      out.push(table(['upstream writes', 'target', ...cols.map((c) => c.head)], rows));
    }
  }

  const drops = info.measurements.filter((x) => x.listenDrops > 0);
  for (const x of drops) {
    info.notes.push(
      `${x.scenario}/${x.variant}/${x.target}: the machine counted ${x.listenDrops} connections ` +
        'dropped from a full accept queue during this run (ListenDrops covers every process in ' +
        "the network namespace, other people's tests too); a dropped connection waits 1 s or " +
        "more for its SYN retransmit, so that row's tail latencies may be off",
    );
  }
  if (info.notes.length) {
    out.push('');
    out.push('## Notes from this run');
    out.push('');
    for (const n of info.notes) out.push(`- ${n}`);
  }
  return out.join('\n');
}

/** The cost scenario's two runs of each target as one line each: fixed and per-token CPU. */
function costSection(info: RunInfo, ms: Measurement[]): string[] {
  const model = (target: string) => {
    const short = ms.find((x) => x.target === target && x.variant === 'short');
    const long = ms.find((x) => x.target === target && x.variant === 'long');
    return short && long ? costModel(short, long) : undefined;
  };
  const base = model('baseline');
  if (!base) return [];
  const lengths = [20, 200, 1000];
  const rows: string[][] = [];
  for (const t of info.targets) {
    const m = model(t.key);
    if (!m) continue;
    const vs = (x: number, y: number) => (t.key === 'baseline' ? '' : ` (${fmt.ratio(x / y)})`);
    rows.push([
      t.label,
      `${fmt.int(m.fixedUs)}${vs(m.fixedUs, base.fixedUs)}`,
      `${fmt.us(m.perTokenUs)}${vs(m.perTokenUs, base.perTokenUs)}`,
      ...lengths.map((n) =>
        t.key === 'baseline'
          ? fmt.us(modelCpuPerToken(m, n))
          : fmt.ratio(modelCpuPerToken(m, n) / modelCpuPerToken(base, n)),
      ),
    ]);
  }
  return [
    '',
    'CPU per stream = fixed + per token x tokens, the line through the two runs above. The last ' +
      'columns are what that line gives for CPU per token at other answer lengths, as a ratio ' +
      "to the pipe's (the pipe's own in µs).",
    '',
    table(
      [
        'target',
        'fixed µs/stream',
        'µs per token',
        ...lengths.map((n) => `CPU/token at ${n} tokens`),
      ],
      rows,
    ),
  ];
}

interface Column {
  head: string;
  cell(x: Measurement, base: Measurement | undefined): string;
}

/** The table columns for a set of measurements: memory only where it was measured. */
function columns(vs: Measurement[], framing: boolean): Column[] {
  const ratio = (x: Measurement, base: Measurement | undefined, pick: (d: Derived) => number) => {
    const v = pick(derive(x));
    if (!base || base === x) return '';
    return ` (${fmt.ratio(v / pick(derive(base)))})`;
  };
  const num = (head: string, pick: (d: Derived) => number, f: (v: number) => string): Column => ({
    head,
    cell: (x, base) => f(pick(derive(x))) + ratio(x, base, pick),
  });
  const perStream = (n: number, m: Measurement) => (n / Math.max(1, m.streams)).toFixed(1);
  const cols: Column[] = [
    {
      head: 'ok / streams',
      cell: (x) =>
        `${x.ok} / ${x.streams}` +
        (x.failures ? ` (${x.failures} failed: ${x.failureSamples[0] ?? ''})` : '') +
        (x.probeStreams
          ? `; memory probe ${x.probeStreams - x.probeFailures} / ${x.probeStreams}`
          : ''),
    },
    { head: 'tokens lost', cell: (x) => String(x.tokensLost + x.probeTokensLost) },
    { head: 'U+FFFD', cell: (x) => String(x.replacementChars) },
  ];
  if (!framing) {
    cols.push(
      num('TTFT p50 ms', (d) => d.ttftP50, fmt.ms),
      num('TTFT p99 ms', (d) => d.ttftP99, fmt.ms),
      num('total p50 ms', (d) => d.totalP50, fmt.ms),
      num('total p99 ms', (d) => d.totalP99, fmt.ms),
      { head: 'tokens/s', cell: (x) => fmt.int(derive(x).tokensPerSec) },
    );
  } else {
    cols.push(num('total p50 ms', (d) => d.totalP50, fmt.ms));
  }
  cols.push(
    num('CPU µs/token', (d) => d.cpuUsPerToken, fmt.us),
    {
      head: 'syscalls/stream read, write',
      cell: (x) => `${perStream(x.readCalls, x)}, ${perStream(x.writeCalls, x)}`,
    },
  );
  if (vs.some((x) => x.probe.length)) {
    cols.push({
      head: 'live memory/open stream: RSS (JS heap)',
      cell: (x, base) => {
        const d = derive(x);
        return (
          `${fmt.kib(d.memPerStream)}${ratio(x, base, (e) => e.memPerStream)} ` +
          `(${fmt.kib(d.heapPerStream)}${ratio(x, base, (e) => e.heapPerStream)}), ${d.probeOpen} open`
        );
      },
    });
  }
  if (vs.some((x) => derive(x).peakOpen >= MEM_MIN_OPEN)) {
    cols.push({
      head: 'peak RSS growth/open stream',
      cell: (x, base) => {
        const d = derive(x);
        return `${fmt.kib(d.peakMemPerStream)}${ratio(x, base, (e) => e.peakMemPerStream)}, ${d.peakOpen} open`;
      },
    });
  }
  if (!framing) cols.push({ head: 'peak RSS', cell: (x) => fmt.mib(derive(x).peakRss) });
  return cols;
}

function context(vs: Measurement[]): string {
  const parts = vs.map((x) => {
    const t = Math.max(1, x.tokens);
    return (
      `${x.target}: simulator ${fmt.us(x.simCpuUs / t)} µs/token, ` +
      (x.redisCpuUs !== undefined ? `redis ${fmt.us(x.redisCpuUs / t)} µs/token, ` : '') +
      'load generator ' +
      `${fmt.us(x.generatorCpuUs / t)} µs/token, other processes ${derive(x).foreignCores.toFixed(2)} core`
    );
  });
  const stalls = vs
    .filter((x) => x.stalls?.length)
    .map(
      (x) =>
        `${x.target} ${x.stalls!.map((r) => `${r.server.toFixed(0)}/${r.generator.toFixed(0)}`).join(', ')}`,
    );
  const stallText = stalls.length
    ? ` Longest event-loop stall in each round, ms, server/load generator: ${stalls.join('; ')}.`
    : '';
  const conns = vs
    .filter((x) => x.perRound?.some((r) => r.connections))
    .map((x) => `${x.target}: ${connectionsText(x)}`);
  const connText = conns.length
    ? ' Each round, ' +
      'the new connections, as connected by the load generator and accepted by the server ' +
      '(libuv accepts one per event-loop turn), and the upstream ones the simulator accepted: ' +
      `${conns.join('; ')}.`
    : '';
  return `CPU elsewhere: ${parts.join('; ')}.${stallText}${connText}`;
}

function profileBlock(info: RunInfo): string {
  const p = info.profile!;
  const out: string[] = [];
  out.push(
    `Profiled ${info.date} with \`${info.command}\`: the proxy child re-run alone under ` +
      `\`node --cpu-prof\` (files: ${p.files.map((f) => `\`${f}\``).join(', ')}); only the samples ` +
      'taken while a measured load ran are counted (start-up and warm-up are not). ' +
      'Self time per token is the sampled time divided by the tokens delivered in that window; ' +
      'sampling adds some overhead, so these totals run a little above the CPU-per-token figures above.',
  );
  for (const w of p.windows) {
    out.push('');
    out.push(
      `### ${w.label}: ${fmt.us(w.busyUs / Math.max(1, w.tokens))} µs/token, ` +
        `${fmt.int(w.busyUs / Math.max(1, w.streams))} µs/stream sampled ` +
        `(${fmt.int(w.streams)} streams, ${fmt.int(w.tokens)} tokens, ${fmt.int(w.samples)} samples)`,
    );
    out.push('');
    const rows = (rs: WindowProfile['areas'], code: boolean) =>
      rs.map((r) => [
        code ? `\`${r.name}\`` : r.name,
        fmt.pct(r.share),
        fmt.us(r.usPerToken),
        fmt.int(r.usPerStream),
      ]);
    out.push('By area (self time):');
    out.push('');
    out.push(table(['area', 'share', 'µs/token', 'µs/stream'], rows(w.areas, false)));
    out.push('');
    out.push('Top self-time functions:');
    out.push('');
    out.push(table(['function', 'share', 'µs/token', 'µs/stream'], rows(w.functions, true)));
    out.push('');
    out.push(
      'Our own functions by inclusive time (self plus what they call synchronously; nested, so ' +
        'the shares overlap):',
    );
    out.push('');
    out.push(table(['function', 'share', 'µs/token', 'µs/stream'], rows(w.inclusive, true)));
  }
  return out.join('\n');
}
