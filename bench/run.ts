// bench/run.ts: `npm run bench`. Starts the simulator (fast mode), the proxy and a bare Node pipe
// (the baseline) each in its own process on loopback, drives them with the load generator in this
// process, reads the servers' CPU time and memory from /proc, and reports the proxy as ratios to
// the baseline (docs/BENCHMARKS.md). For the `sse-redis` target it also starts a redis-server and
// a second proxy journaling to it. See `npm run bench -- --help`.

import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildChildren, type Build } from './build';
import { startChild, type Child } from './children';
import { runLoad, type Job, type LoadOptions } from './loadgen';
import {
  cpuMicros,
  loadAverage,
  machine,
  listenDrops,
  machineBusyMicros,
  memory,
  openFileLimit,
  resetPeak,
  syscalls,
} from './proc';
import { analyse, printProfile, readProfile, type Window, type WindowProfile } from './profile';
import { hasRedisServer, startRedisServer, type RedisServer } from './redis';
import { writeReport, type RunInfo } from './report';
import {
  makeJobs,
  scenarios,
  TARGETS,
  type Scenario,
  type Target,
  type Variant,
} from './scenarios';
import {
  addProbeResults,
  addResults,
  costModel,
  derive,
  connectionsText,
  emptyMeasurement,
  fmt,
  MEM_MIN_OPEN,
  percentile,
  roundRatios,
  type Measurement,
} from './stats';

const ROOT = path.resolve(__dirname, '..');
const PROFILE_DIR = path.join(__dirname, 'profiles');
const DOC = path.join(ROOT, 'docs', 'BENCHMARKS.md');

const HELP = `npm run bench -- [options]

  --quick              small counts: a smoke run in well under a minute
  --scenario NAME      only this scenario (repeatable; comma lists work): latency, throughput,
                       cost, slow, framing
  --target KEY         only these targets besides the baseline: sse, sse-redis (sse from a proxy
                       journaling to a redis-server the bench starts; skipped with a note when
                       redis-server is not installed), text, v1, and the experiment sse-post
                       (POST /chat-stream; not run by default)
  --rounds N           measure every target N times, alternating the order (default 2; 1 with
                       --quick)
  --profile            afterwards, run the proxy again under --cpu-prof (into bench/profiles/) for
                       the latency and throughput scenarios (or the --scenario ones) and print
                       the top self-time functions
  --set KEY=VALUE      override a proxy Config field (JSON value), e.g. --set upstreamMaxSockets=256
  --doc / --no-doc     write docs/BENCHMARKS.md (default: only for a full, unfiltered run)
  --json FILE          also write the raw measurements as JSON
  --render FILE        measure nothing: write docs/BENCHMARKS.md from a --json file
  --echo               show the children's output
`;

interface Options {
  quick: boolean;
  scenarios: string[];
  targets: string[];
  rounds: number;
  profile: boolean;
  set: Record<string, unknown>;
  doc: boolean | undefined;
  json: string | undefined;
  render: string | undefined;
  echo: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    quick: false,
    scenarios: [],
    targets: [],
    rounds: 0,
    profile: false,
    set: {},
    doc: undefined,
    json: undefined,
    render: undefined,
    echo: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') && a.startsWith('--') ? a.split(/=(.*)/s) : [a];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--quick':
        o.quick = true;
        break;
      case '--scenario':
        o.scenarios.push(...value().split(','));
        break;
      case '--target':
        o.targets.push(...value().split(','));
        break;
      case '--rounds':
        o.rounds = Math.max(1, Math.floor(Number(value())) || 1);
        break;
      case '--profile':
        o.profile = true;
        break;
      case '--set': {
        const [k, v] = value().split(/=(.*)/s);
        if (!k || v === undefined) throw new Error('--set takes KEY=VALUE');
        let parsed: unknown = v;
        try {
          parsed = JSON.parse(v);
        } catch {
          // a bare string
        }
        o.set[k] = parsed;
        break;
      }
      case '--doc':
        o.doc = true;
        break;
      case '--no-doc':
        o.doc = false;
        break;
      case '--json':
        o.json = value();
        break;
      case '--render':
        o.render = value();
        break;
      case '--echo':
        o.echo = true;
        break;
      case '--help':
      case '-h':
        process.stdout.write(HELP);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${a}\n\n${HELP}`);
    }
  }
  // Two rounds in opposite orders by default, so drift (other load on a shared machine, heap
  // growth) does not favour whichever target runs first; one for a quick smoke run.
  if (o.rounds === 0) o.rounds = o.quick ? 1 : 2;
  return o;
}

const log = (s: string) => process.stdout.write(s + '\n');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Stack {
  sim: Child;
  proxy: Child | undefined;
  /** The same proxy with Config.redisUrl pointing at `redis`, for `proxy-redis` targets. */
  proxyRedis: Child | undefined;
  redis: RedisServer | undefined;
  baseline: Child | undefined;
}

type Server = Target['server'];

let build: Build | undefined;

/** The simulator and the given servers; nodeArgs go to the proxies (only one, to profile). */
async function startStack(
  opts: Options,
  servers: ReadonlySet<Server>,
  nodeArgs: string[] = [],
): Promise<Stack> {
  const b = build!;
  const [sim, redis] = await Promise.all([
    startChild('sim', b.child('sim-child.ts'), { env: b.env, echo: opts.echo }),
    servers.has('proxy-redis') ? startRedisServer() : Promise.resolve(undefined),
  ]);
  const env = { ...b.env, BENCH_UPSTREAM: sim.url, BENCH_PROXY_CONFIG: JSON.stringify(opts.set) };
  const start = (server: Server, name: string, script: string, e = env, args: string[] = []) =>
    servers.has(server)
      ? startChild(name, b.child(script), { env: e, nodeArgs: args, echo: opts.echo })
      : Promise.resolve(undefined);
  const [proxy, proxyRedis, baseline] = await Promise.all([
    start('proxy', 'proxy', 'proxy-child.ts', env, nodeArgs),
    start(
      'proxy-redis',
      'proxy-redis',
      'proxy-child.ts',
      { ...env, BENCH_PROXY_CONFIG: JSON.stringify({ ...opts.set, redisUrl: redis?.url }) },
      nodeArgs,
    ),
    start('baseline', 'baseline', 'baseline-child.ts'),
  ]);
  return { sim, proxy, proxyRedis, redis, baseline };
}

async function stopStack(s: Stack): Promise<void> {
  await Promise.all([s.proxy?.stop(), s.proxyRedis?.stop(), s.baseline?.stop()]);
  await Promise.all([s.sim.stop(), s.redis?.stop()]);
}

/** True when the route exists (anything but 404/405 to a real request). */
async function probe(target: Target, server: Child): Promise<boolean> {
  const [job] = makeJobs(target, 'probe', 1, 2, '');
  const r = await runLoad({
    host: '127.0.0.1',
    port: server.port,
    wire: target.wire,
    jobs: [job!],
    concurrency: 1,
    timeoutMs: 10_000,
  });
  return r.results[0]!.status !== 404 && r.results[0]!.status !== 405;
}

/** Runs of jobs against `server`, as `target` speaks to it, with the variant's time limit. */
function loader(server: Child, target: Target, v: Variant) {
  return (jobs: Job[], concurrency: number, hooks: Partial<LoadOptions> = {}) =>
    runLoad({
      host: '127.0.0.1',
      port: server.port,
      wire: target.wire,
      jobs,
      concurrency,
      timeoutMs: v.timeoutMs,
      ...hooks,
    });
}

/** The targets in round `round`'s order: alternating, so drift does not favour one side. */
function roundOrder(live: Target[], round: number): Target[] {
  return round % 2 === 0 ? live : [...live].reverse();
}

/**
 * Live memory per open stream (a variant with a memoryProbe), one reading per round and target,
 * on servers started for it after the measured rounds: a proxy process per target, as the pipe
 * has its own, all of a target's rounds in a row. Not on the measured servers: the probe's collections, with no stream open, throw
 * away optimised code (see measureOnce), and a slow round measured after one set its 1000
 * streams up 100-250 ms later (scratch harness); and after minutes without a collection there,
 * the idle RSS read after the first collection stood above the RSS with the streams open. Not
 * one proxy for all its targets either: the proxy keeps every finished stream's journal for its
 * TTL, so a process that had served the other routes' probes read a larger idle heap each time
 * (21 to 46 MB used over six probes in one process; the pipe's stayed at 5.4), and its RSS per
 * open stream moved with how much free space its old generation happened to hold.
 */
async function probeMemory(
  ms: ReadonlyMap<string, Measurement>,
  live: Target[],
  v: Variant,
  opts: Options,
): Promise<void> {
  for (const t of live) {
    const stack = await startStack(opts, new Set([t.server]));
    try {
      for (let round = 0; round < opts.rounds; round++) {
        await probeOnce(ms.get(t.key)!, serverFor(stack, t), t, v, `${v.key} r${round}`);
      }
    } finally {
      await stopStack(stack);
    }
  }
}

/**
 * One probe: the variant's warm-up and its measured load, unmeasured (a fresh process's heap,
 * its young generation most, grows under that load; read before, the growth counted against
 * the probe's streams), then longer streams, so all are open together; when 98% of them have
 * had their first token (or the first one ends), collect garbage and read the JS heap (in the
 * same turn as the collection) and, once V8 has given the collected pages back, the RSS; against
 * the same readings idle just before.
 */
async function probeOnce(
  m: Measurement,
  server: Child,
  target: Target,
  v: Variant,
  tag: string,
): Promise<void> {
  const p = v.memoryProbe!;
  const load = loader(server, target, v);
  const w = v.warmup;
  await load(
    makeJobs(target, `${tag} memory warmup`, w.streams, w.tokens, w.directives),
    w.concurrency,
  );
  await load(
    makeJobs(target, `${tag} memory run`, v.streams, v.tokens, v.directives),
    v.concurrency,
  );
  const drops0 = listenDrops();
  await sleep(200); // the load's connections close
  const idleHeap = await server.gc();
  // V8 gives the collected pages back over some milliseconds: the RSS read right away stood up
  // to 35 MB above the same read 200 ms later (scratch runs, 2026-11-30).
  await sleep(200);
  const idleRss = memory(server.pid).rss;
  let firsts = 0;
  let ended = 0;
  let probe: Promise<void> | undefined;
  const snap = () => {
    if (probe) return;
    const open = firsts - ended;
    probe = server.gc().then(async (heap) => {
      // As idle. The streams stay open meanwhile (200 tokens at 25 ms).
      await sleep(200);
      m.probe.push({ open, idleRss, rss: memory(server.pid).rss, idleHeap, heap });
    });
  };
  const probeJobs = makeJobs(target, `${tag} memory`, v.streams, p.tokens, p.directives);
  const r = await load(probeJobs, v.concurrency, {
    onFirstToken: () => {
      if (++firsts >= Math.ceil(probeJobs.length * 0.98)) snap();
    },
    onProgress: () => {
      ended++;
      snap();
    },
  });
  await probe;
  addProbeResults(m, r.results);
  m.listenDrops += listenDrops() - drops0;
}

/** One measured run of one target: warm-up, then the load with /proc readings around it. */
async function measureOnce(
  m: Measurement,
  stack: Stack,
  server: Child,
  target: Target,
  v: Variant,
  tag: string,
): Promise<void> {
  const load = loader(server, target, v);
  const w = v.warmup;
  await load(makeJobs(target, `${tag} warmup`, w.streams, w.tokens, w.directives), w.concurrency);
  const jobs = makeJobs(target, tag, v.streams, v.tokens, v.directives);
  // Every measured run starts from an empty Redis: the journals of the warm-up and of earlier
  // runs would otherwise pile up (and expire, costing Redis CPU) across rounds and variants.
  if (target.server === 'proxy-redis') await stack.redis!.flush();

  // No forced garbage collection here, between the warm-up and the measurement: a full
  // collection while no stream is open lets V8 throw away optimised code of the per-request
  // path (in the proxy about 150 functions, Node's http and streams and ours: "weak objects" in
  // --trace-deopt), and the 2,000 or so streams after it ran partly unoptimised again
  // (docs/BENCHMARKS.md, "What is measured"). The idle reading is the warmed process as it is,
  // once the warm-up's connections have closed.
  await sleep(200);
  await server.stall(); // from here on
  const idle = memory(server.pid).rss;
  const canReset = resetPeak(server.pid);
  let sampled = idle;
  const sample = () => {
    const r = memory(server.pid).rss;
    if (r > sampled) sampled = r;
  };
  const many = v.concurrency >= MEM_MIN_OPEN;
  if (many) await Promise.all([server.accepts(), stack.sim.accepts()]); // counts start here
  const sampler = setInterval(sample, 50);
  const drops0 = listenDrops();
  const others = [stack.sim, stack.proxy, stack.proxyRedis, stack.baseline].filter(
    (c): c is Child => !!c,
  );
  const redisPid = stack.redis?.pid;
  const cpu0 = others.map((c) => cpuMicros(c.pid));
  const redis0 = redisPid === undefined ? 0 : cpuMicros(redisPid);
  const io0 = syscalls(server.pid);
  const busy0 = machineBusyMicros();

  const result = await load(jobs, v.concurrency, {
    // Sample memory when the number of open streams is at its highest too.
    onProgress: many ? sample : undefined,
  });

  const busy1 = machineBusyMicros();
  const cpu1 = others.map((c) => cpuMicros(c.pid));
  const redisUs = redisPid === undefined ? 0 : cpuMicros(redisPid) - redis0;
  const io1 = syscalls(server.pid);
  clearInterval(sampler);
  sample();
  (m.stalls ??= []).push({ server: await server.stall(), generator: result.generatorMaxDelayMs });
  const [serverAccepts, simAccepts] = many
    ? await Promise.all([server.accepts(), stack.sim.accepts()])
    : [];
  const peak = Math.max(sampled, canReset ? memory(server.pid).hwm : 0);
  const delta = (c: Child) => cpu1[others.indexOf(c)]! - cpu0[others.indexOf(c)]!;
  // Redis is ours too: its CPU is not "other load" on the machine.
  const ours = others.reduce((s, c) => s + delta(c), 0) + result.generatorCpuMicros + redisUs;

  const tokensBefore = m.tokens;
  const ttftBefore = m.ttftMs.length;
  addResults(m, result.results);
  (m.perRound ??= []).push({
    cpuUs: delta(server),
    tokens: m.tokens - tokensBefore,
    ttftP50: percentile(m.ttftMs.slice(ttftBefore), 50),
    ttftCount: m.ttftMs.length - ttftBefore,
    ...(serverAccepts && simAccepts
      ? { connections: { client: result.connects, server: serverAccepts, sim: simAccepts } }
      : {}),
  });
  m.rounds++;
  m.wallMs += result.wallMs;
  m.cpuUs += delta(server);
  m.simCpuUs += delta(stack.sim);
  if (target.server === 'proxy-redis') m.redisCpuUs = (m.redisCpuUs ?? 0) + redisUs;
  m.readCalls += io1.reads - io0.reads;
  m.writeCalls += io1.writes - io0.writes;
  m.generatorCpuUs += result.generatorCpuMicros;
  m.foreignCpuUs += Math.max(0, busy1 - busy0 - ours);
  m.idleRss.push(idle);
  m.peakRss.push(peak);
  m.peakOpen.push(result.peakOpen);

  m.listenDrops += listenDrops() - drops0;
}

function serverFor(stack: Stack, t: Target): Child {
  const c = { proxy: stack.proxy, 'proxy-redis': stack.proxyRedis, baseline: stack.baseline }[
    t.server
  ];
  if (!c) throw new Error(`${t.key}: its server (${t.server}) was not started`);
  return c;
}

/** Per-round ratios, for the console line: ` [rounds 1.52 1.61]`, or ''. */
function rounds(ratios: number[]): string {
  return ratios.length ? ` [rounds ${ratios.map((x) => x.toFixed(2)).join(' ')}]` : '';
}

function printMeasurement(m: Measurement, base: Measurement | undefined): void {
  const d = derive(m);
  const b = base && base !== m ? derive(base) : undefined;
  const r = (x: number, y: number | undefined) => (y === undefined ? '' : ` (${fmt.ratio(x / y)})`);
  log(
    `  ${m.target.padEnd(9)} ok ${m.ok}/${m.streams}` +
      (m.failures ? ` FAILED ${m.failures} [${m.failureSamples.join(' | ')}]` : '') +
      ` lost ${m.tokensLost} fffd ${m.replacementChars}` +
      ` | ttft p50 ${fmt.ms(d.ttftP50)}${r(d.ttftP50, b?.ttftP50)}` +
      ` p99 ${fmt.ms(d.ttftP99)}${r(d.ttftP99, b?.ttftP99)} ms` +
      ` | total p99 ${fmt.ms(d.totalP99)}${r(d.totalP99, b?.totalP99)} ms` +
      ` | ${fmt.int(d.tokensPerSec)} tok/s` +
      ` | syscalls/stream r ${(m.readCalls / m.streams).toFixed(1)} w ${(m.writeCalls / m.streams).toFixed(1)}` +
      ` | cpu ${fmt.us(d.cpuUsPerToken)}${r(d.cpuUsPerToken, b?.cpuUsPerToken)} µs/tok` +
      (b ? rounds(roundRatios(m, base!, 'cpu')) : '') +
      // Said next to the proxy's figure, so the journal's cost in Redis is not mistaken as absent.
      (m.redisCpuUs !== undefined
        ? ` (+ redis-server ${fmt.us(m.redisCpuUs / Math.max(1, m.tokens))} µs/tok, not in the ratio)`
        : '') +
      (d.peakOpen >= MEM_MIN_OPEN
        ? ` | peak mem ${fmt.kib(d.peakMemPerStream)}${r(d.peakMemPerStream, b?.peakMemPerStream)}/stream` +
          ` (open ${d.peakOpen})`
        : '') +
      (m.probe.length
        ? ` | live mem ${fmt.kib(d.memPerStream)}${r(d.memPerStream, b?.memPerStream)}/stream` +
          ` (heap ${fmt.kib(d.heapPerStream)}${r(d.heapPerStream, b?.heapPerStream)},` +
          ` ${d.probeOpen} open)`
        : '') +
      ` | peak RSS ${fmt.mib(d.peakRss)}` +
      (m.stalls?.length
        ? ` | longest stall ms: server ${m.stalls.map((x) => x.server.toFixed(0)).join(' ')},` +
          ` generator ${m.stalls.map((x) => x.generator.toFixed(0)).join(' ')}`
        : '') +
      (m.perRound?.some((x) => x.connections) ? ` | ${connectionsText(m)}` : '') +
      (m.listenDrops ? ` | ${m.listenDrops} LISTEN DROPS` : '') +
      (d.foreignCores > 0.1 ? ` | other load ${fmt.pct(d.foreignCores)} of a core` : ''),
  );
}

function printCostModels(ms: Measurement[], targets: Target[]): void {
  const fit = (key: string) => {
    const short = ms.find((x) => x.target === key && x.variant === 'short');
    const long = ms.find((x) => x.target === key && x.variant === 'long');
    return short && long ? costModel(short, long) : undefined;
  };
  const base = fit('baseline');
  for (const t of targets) {
    const m = fit(t.key);
    if (!m) continue;
    const r = (x: number, y: number | undefined) =>
      y === undefined || t.key === 'baseline' ? '' : ` (${fmt.ratio(x / y)})`;
    log(
      `  ${t.key.padEnd(9)} fixed ${fmt.int(m.fixedUs)}${r(m.fixedUs, base?.fixedUs)} µs/stream` +
        ` + ${fmt.us(m.perTokenUs)}${r(m.perTokenUs, base?.perTokenUs)} µs/token`,
    );
  }
}

async function runScenario(
  sc: Scenario,
  targets: Target[],
  opts: Options,
  notes: string[],
): Promise<Measurement[]> {
  const maxConc = Math.max(...sc.variants.map((v) => v.concurrency));
  const fds = openFileLimit();
  // Per process, at worst: the proxy holds 2 sockets per stream (client + upstream).
  if (fds !== undefined && fds < 2 * maxConc + 256) {
    throw new Error(
      `scenario ${sc.key} opens ${maxConc} streams at once: that needs about ${2 * maxConc + 256} ` +
        `file descriptors per process, but ulimit -n is ${fds}. Run \`ulimit -n 8192\` first.`,
    );
  }
  log(`\n== ${sc.title}: ${sc.what}`);
  const stack = await startStack(opts, new Set(['baseline', ...targets.map((t) => t.server)]));
  const out: Measurement[] = [];
  try {
    const live: Target[] = [];
    for (const t of targets) {
      if (t.probe && !(await probe(t, serverFor(stack, t)))) {
        const note = `${t.label}: the route answered 404, skipped`;
        if (!notes.includes(note)) notes.push(note);
        log(`  ${note}`);
        continue;
      }
      live.push(t);
    }
    for (const v of sc.variants) {
      log(`-- ${v.label}`);
      const ms = new Map(
        live.map((t) => [t.key, emptyMeasurement(sc.key, v.key, v.label, t.key)] as const),
      );
      for (let round = 0; round < opts.rounds; round++) {
        for (const t of roundOrder(live, round)) {
          await measureOnce(ms.get(t.key)!, stack, serverFor(stack, t), t, v, `${v.key} r${round}`);
        }
      }
      if (v.memoryProbe) await probeMemory(ms, live, v, opts);
      const base = ms.get('baseline');
      for (const t of live) printMeasurement(ms.get(t.key)!, base);
      out.push(...ms.values());
    }
    if (sc.key === 'cost') printCostModels(out, live);
  } finally {
    await stopStack(stack);
  }
  return out;
}

/**
 * The --profile pass: one proxy (the plain one, or the one journaling to Redis) alone under
 * --cpu-prof, one window per target it serves.
 */
async function profileScenario(
  sc: Scenario,
  targets: Target[],
  opts: Options,
  server: 'proxy' | 'proxy-redis',
): Promise<{ file: string; windows: WindowProfile[] }> {
  fs.mkdirSync(PROFILE_DIR, { recursive: true });
  const name = `${server}-${sc.key}-${new Date().toISOString().replace(/[:.]/g, '-')}.cpuprofile`;
  const file = path.join(PROFILE_DIR, name);
  log(`\n== profile: ${sc.title} (${server} under --cpu-prof -> ${path.relative(ROOT, file)})`);
  const stack = await startStack(opts, new Set([server]), [
    '--cpu-prof',
    '--cpu-prof-interval=200',
    `--cpu-prof-dir=${PROFILE_DIR}`,
    `--cpu-prof-name=${name}`,
  ]);
  const windows: Window[] = [];
  try {
    for (const t of targets.filter((x) => x.server === server)) {
      const proxy = serverFor(stack, t);
      if (t.probe && !(await probe(t, proxy))) continue;
      for (const v of sc.variants) {
        const m = emptyMeasurement(sc.key, v.key, v.label, t.key);
        const w = v.warmup;
        await runLoad({
          host: '127.0.0.1',
          port: proxy.port,
          wire: t.wire,
          jobs: makeJobs(t, `profile warmup ${v.key}`, w.streams, w.tokens, w.directives),
          concurrency: w.concurrency,
          timeoutMs: v.timeoutMs,
        });
        await stack.redis?.flush();
        const from = await proxy.now();
        const r = await runLoad({
          host: '127.0.0.1',
          port: proxy.port,
          wire: t.wire,
          jobs: makeJobs(t, `profile ${v.key}`, v.streams, v.tokens, v.directives),
          concurrency: v.concurrency,
          timeoutMs: v.timeoutMs,
        });
        const to = await proxy.now();
        addResults(m, r.results);
        const label = `${sc.key}, ${t.label}${sc.variants.length > 1 ? `, ${v.label}` : ''}`;
        windows.push({ label, from, to, tokens: m.tokens, streams: m.streams });
      }
    }
  } finally {
    await stopStack(stack);
  }
  const profile = readProfile(file);
  for (const w of windows) {
    if (w.from < profile.startTime || w.to > profile.endTime + 1e6) {
      log(
        `  warning: window ${w.label} [${w.from}, ${w.to}] is outside the profile's clock ` +
          `[${profile.startTime}, ${profile.endTime}]: the process clock and V8's differ`,
      );
    }
  }
  const analysed = analyse(profile, windows, build!.dir);
  for (const p of analysed) log(printProfile(p));
  return { file: path.relative(ROOT, file), windows: analysed };
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.render) {
    writeReport(DOC, JSON.parse(fs.readFileSync(opts.render, 'utf8')) as RunInfo);
    log(`wrote ${path.relative(ROOT, DOC)} from ${opts.render}`);
    return;
  }
  const all = scenarios(opts.quick);
  for (const s of opts.scenarios) {
    if (!all.some((x) => x.key === s)) {
      throw new Error(`unknown scenario ${s}; known: ${all.map((x) => x.key).join(', ')}`);
    }
  }
  for (const t of opts.targets) {
    if (!TARGETS.some((x) => x.key === t)) {
      throw new Error(`unknown target ${t}; known: ${TARGETS.map((x) => x.key).join(', ')}`);
    }
  }
  const chosen = opts.scenarios.length ? all.filter((s) => opts.scenarios.includes(s.key)) : all;
  let targets = TARGETS.filter((t) => {
    if (t.key === 'baseline') return true;
    return opts.targets.length ? opts.targets.includes(t.key) : !t.optional;
  });
  const notes: string[] = [];
  const full = !opts.quick && !opts.scenarios.length && !opts.targets.length;
  const command = ['npm run bench', ...(process.argv.length > 2 ? ['--'] : [])]
    .concat(process.argv.slice(2))
    .join(' ');
  const m = machine();
  const started = new Date();
  const load0 = loadAverage();
  log(
    `deepseek-stream-proxy bench: ${m.nproc} cpu (${m.cpuModel}), ${m.ramGiB} GiB, node ${m.node},` +
      ` ulimit -n ${m.openFiles}, load ${load0.toFixed(2)}${opts.quick ? ', QUICK' : ''}`,
  );
  // Missing redis-server skips its targets, loudly, but is no reason to fail the run.
  const needRedis = targets.filter((t) => t.server === 'proxy-redis');
  const noRedis =
    needRedis.length && !hasRedisServer()
      ? `!!! SKIPPED ${needRedis.map((t) => t.key).join(', ')}: redis-server is not installed ` +
        '(apt-get install redis-server), so CPU per token with the Redis journal is NOT measured'
      : undefined;
  if (noRedis) {
    log(noRedis);
    notes.push(noRedis.replace(/^!!! /, ''));
    targets = targets.filter((t) => t.server !== 'proxy-redis');
  }
  const t0 = performance.now();
  build = buildChildren();
  process.on('exit', () => build?.remove());
  log(
    `compiled src/ (sha256 ${build.source.hash}, newest ${build.source.newest} ` +
      `${build.source.newestAt}) and the bench children in ` +
      `${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  const measurements: Measurement[] = [];
  for (const sc of chosen) measurements.push(...(await runScenario(sc, targets, opts, notes)));
  const measuredMs = performance.now() - t0;

  let profile: RunInfo['profile'];
  if (opts.profile) {
    const t1 = performance.now();
    const which = opts.scenarios.length
      ? chosen
      : chosen.filter((s) => s.key === 'latency' || s.key === 'throughput');
    const parts = [];
    for (const sc of which) {
      for (const server of ['proxy', 'proxy-redis'] as const) {
        if (targets.some((t) => t.server === server)) {
          parts.push(await profileScenario(sc, targets, opts, server));
        }
      }
    }
    profile = {
      files: parts.map((p) => p.file),
      windows: parts.flatMap((p) => p.windows),
      durationMs: performance.now() - t1,
    };
  }

  const info: RunInfo = {
    command,
    date: started.toISOString(),
    machine: m,
    quick: opts.quick,
    rounds: opts.rounds,
    overrides: opts.set,
    durationMs: performance.now() - t0,
    measuredMs,
    loadBefore: load0,
    loadAfter: loadAverage(),
    notes,
    scenarios: chosen,
    targets,
    measurements,
    profile,
    source: build.source,
  };
  log(`\ndone in ${(info.durationMs / 1000).toFixed(0)} s`);
  // Again at the end: the first one scrolled away minutes ago.
  if (noRedis) log(noRedis);
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify(info, null, 2));
  if (opts.doc ?? full) {
    writeReport(DOC, info);
    log(`wrote ${path.relative(ROOT, DOC)}`);
  } else {
    log('docs/BENCHMARKS.md not written (a partial or quick run; --doc forces it)');
  }
  const failed = measurements.some(
    (x) => x.failures > 0 || x.tokensLost > 0 || x.probeFailures > 0 || x.probeTokensLost > 0,
  );
  process.exitCode = failed ? 1 : 0;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
});
