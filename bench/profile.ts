// bench/profile.ts: read a V8 .cpuprofile (what `node --cpu-prof` writes) without any tool:
// self time per function and per area (our src/ modules, each npm package, Node's internals,
// GC), counted only for the samples inside the measured windows (so tsx's compile time, start-up
// and idle gaps between runs are left out).
//
// Format: { nodes: [{ id, callFrame: { functionName, url, lineNumber }, children? }],
//           startTime, endTime, samples: [nodeId...], timeDeltas: [µs...] }.
// Sample i was taken at startTime + sum(timeDeltas[0..i]); it stands for the time until the next.

import fs from 'node:fs';
import path from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface Window {
  label: string;
  /** Microseconds on the profiled process's monotonic clock. */
  from: number;
  to: number;
  /** Tokens delivered in the window, for µs per token. */
  tokens: number;
  /** Streams run in the window, for µs per stream. */
  streams: number;
}

export interface Row {
  name: string;
  /** Self time, µs. */
  selfUs: number;
  share: number;
  usPerToken: number;
  usPerStream: number;
}

export interface WindowProfile {
  label: string;
  tokens: number;
  streams: number;
  /** Sampled busy time (idle excluded), µs. */
  busyUs: number;
  samples: number;
  functions: Row[];
  areas: Row[];
  /** Our own functions (src/) by inclusive time: self plus everything they call synchronously. */
  inclusive: Row[];
}

const ROOT = path.resolve(__dirname, '..');

/** Where the profiled process ran our code from: the project, or bench/build.ts's directory. */
let buildDir = ROOT;

/** A project file's path as in the repository (`src/stream/decoder.ts`), else undefined. */
function ownPath(url: string): string | undefined {
  const u = url.replace(/^file:\/\//, '');
  for (const root of [buildDir, ROOT]) {
    if (u.startsWith(root + '/')) return u.slice(root.length + 1).replace(/\.js$/, '.ts');
  }
  return undefined;
}

/**
 * A readable location: `src/stream/decoder.ts`, `express/lib/router.js:40`, `node:net:617`.
 * Our own files get no line number: the line is the compiled JavaScript's, not the source's.
 */
function where(cf: CallFrame): string {
  const url = cf.url;
  if (!url) return '';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) return `${url.slice(nm + '/node_modules/'.length)}:${cf.lineNumber + 1}`;
  return ownPath(url) ?? `${url}:${cf.lineNumber + 1}`;
}

function isOwn(cf: CallFrame): boolean {
  return ownPath(cf.url)?.startsWith('src/') ?? false;
}

/** Which part of the stack a frame belongs to. */
export function area(cf: CallFrame): string {
  const fn = cf.functionName;
  if (fn === '(garbage collector)') return 'GC';
  if (fn === '(program)') return '(program: V8/native, unattributed)';
  if (fn === '(idle)') return '(idle)';
  const url = cf.url.replace(/^file:\/\//, '');
  if (!url) return 'native bindings (writev, JSON, TextDecoder...)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return `npm: ${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  const own = ownPath(url);
  if (own !== undefined) return own.startsWith('src/') ? own : `other: ${own}`;
  if (url.startsWith('node:')) {
    const m = url.slice(5);
    if (/streams\/|^stream/.test(m)) return 'node: streams';
    if (/http|_http_/.test(m)) return 'node: http';
    if (/^net$|stream_base_commons|^internal\/net/.test(m)) return 'node: net';
    if (/timers/.test(m)) return 'node: timers';
    if (/events/.test(m)) return 'node: events';
    if (/buffer|encoding|util/.test(m)) return 'node: buffer/encoding/util';
    if (/process\/task_queues|async_hooks|promises/.test(m)) return 'node: microtasks/async';
    return `node: ${m.replace(/^internal\//, '')}`;
  }
  return url;
}

export function readProfile(file: string): CpuProfile {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
}

/** Self time per function and per area for each window. */
export function analyse(
  profile: CpuProfile,
  windows: Window[],
  codeDir = ROOT,
  top = 12,
): WindowProfile[] {
  buildDir = codeDir;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  // For each node: the names of the src/ functions on its stack (each once), computed lazily.
  const ownStack = new Map<number, string[]>();
  const ownFrames = (id: number): string[] => {
    const known = ownStack.get(id);
    if (known) return known;
    const node = byId.get(id)!;
    const up = parent.has(id) ? ownFrames(parent.get(id)!) : [];
    const cf = node.callFrame;
    const mine = isOwn(cf) ? `${cf.functionName || '(anonymous)'} ${where(cf)}` : undefined;
    const list = mine && !up.includes(mine) ? [...up, mine] : up;
    ownStack.set(id, list);
    return list;
  };
  // Timestamps and durations of every sample.
  const n = profile.samples.length;
  const at = new Float64Array(n);
  let t = profile.startTime;
  for (let i = 0; i < n; i++) {
    t += profile.timeDeltas[i] ?? 0;
    at[i] = t;
  }
  const dur = (i: number) => (i + 1 < n ? at[i + 1]! - at[i]! : 0);

  return windows.map((w) => {
    const fns = new Map<string, number>();
    const areas = new Map<string, number>();
    const incl = new Map<string, number>();
    let busy = 0;
    let samples = 0;
    for (let i = 0; i < n; i++) {
      if (at[i]! < w.from || at[i]! > w.to) continue;
      const node = byId.get(profile.samples[i]!);
      if (!node) continue;
      const cf = node.callFrame;
      const a = area(cf);
      if (a === '(idle)') continue;
      const d = dur(i);
      busy += d;
      samples++;
      const name = `${cf.functionName || '(anonymous)'} ${where(cf)}`.trim();
      fns.set(name, (fns.get(name) ?? 0) + d);
      areas.set(a, (areas.get(a) ?? 0) + d);
      for (const f of ownFrames(node.id)) incl.set(f, (incl.get(f) ?? 0) + d);
    }
    const rows = (m: Map<string, number>, limit: number): Row[] =>
      [...m.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, limit)
        .map(([name, us]) => ({
          name,
          selfUs: us,
          share: busy > 0 ? us / busy : 0,
          usPerToken: w.tokens > 0 ? us / w.tokens : 0,
          usPerStream: w.streams > 0 ? us / w.streams : 0,
        }));
    return {
      label: w.label,
      tokens: w.tokens,
      streams: w.streams,
      busyUs: busy,
      samples,
      functions: rows(fns, top),
      areas: rows(areas, 15),
      inclusive: rows(incl, 10),
    };
  });
}

export function printProfile(p: WindowProfile): string {
  const lines: string[] = [];
  lines.push(
    `profile ${p.label}: ${(p.busyUs / 1000).toFixed(0)} ms busy in ${p.samples} samples, ` +
      `${p.streams} streams, ${p.tokens} tokens: ` +
      `${(p.busyUs / Math.max(1, p.tokens)).toFixed(2)} µs/token, ` +
      `${(p.busyUs / Math.max(1, p.streams)).toFixed(0)} µs/stream sampled`,
  );
  const section = (title: string, rows: Row[]) => {
    lines.push(`  ${title}:                      share   µs/token  µs/stream`);
    for (const r of rows) {
      lines.push(
        `    ${`${(r.share * 100).toFixed(1)}%`.padStart(6)}  ${r.usPerToken.toFixed(2).padStart(8)}` +
          `  ${r.usPerStream.toFixed(0).padStart(9)}  ${r.name}`,
      );
    }
  };
  section('top self time', p.functions);
  section('by area (self time)', p.areas);
  section('src/ functions, inclusive', p.inclusive);
  return lines.join('\n');
}
