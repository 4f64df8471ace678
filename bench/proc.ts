// bench/proc.ts: what the OS says about a process (Linux /proc): CPU time from
// /proc/<pid>/stat (utime + stime, in clock ticks), memory from /proc/<pid>/status (VmRSS, VmHWM),
// the peak-RSS reset through /proc/<pid>/clear_refs, the machine's description, and the CPU time
// the whole machine spent (to spot other load on a shared box).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

let clkTck: number | undefined;

/** Clock ticks per second (USER_HZ), almost always 100 on Linux. */
export function clockTicks(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime + stime of a process, in microseconds (resolution: one clock tick, 10 ms at 100 Hz). */
export function cpuMicros(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state), so utime (field 14) is fields[11] and stime (15) fields[12].
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1e6) / clockTicks();
}

export interface MemInfo {
  /** Resident set size now, bytes. */
  rss: number;
  /** Peak resident set size since start or the last resetPeak(), bytes. */
  hwm: number;
}

export function memory(pid: number): MemInfo {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status);
    return m ? Number(m[1]) * 1024 : 0;
  };
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** read- and write-family system calls so far (/proc/<pid>/io syscr, syscw); -1 if unreadable. */
export function syscalls(pid: number): { reads: number; writes: number } {
  try {
    const io = fs.readFileSync(`/proc/${pid}/io`, 'utf8');
    const get = (k: string) => Number(new RegExp(`^${k}: (\\d+)`, 'm').exec(io)?.[1] ?? -1);
    return { reads: get('syscr'), writes: get('syscw') };
  } catch {
    return { reads: -1, writes: -1 };
  }
}

/** Reset VmHWM to the current RSS (Linux >= 4.0). False when not permitted. */
export function resetPeak(pid: number): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Busy CPU time of the whole machine (all cores), microseconds, from /proc/stat. */
export function machineBusyMicros(): number {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  // cpu user nice system idle iowait irq softirq steal guest guest_nice
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = v[0]! + v[1]! + v[2]! + v[5]! + v[6]! + v[7]!;
  return (busy * 1e6) / clockTicks();
}

/** The soft limit on open files of this process (children inherit it). */
export function openFileLimit(): number | undefined {
  try {
    const limits = fs.readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
    if (!m) return undefined;
    return m[1] === 'unlimited' ? Infinity : Number(m[1]);
  } catch {
    return undefined;
  }
}

export interface Machine {
  nproc: number;
  cpuModel: string;
  ramGiB: number;
  kernel: string;
  node: string;
  openFiles: number | undefined;
}

export function machine(): Machine {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpuModel = m[1]!.trim();
  } catch {
    // keep os.cpus()'s answer
  }
  let nproc = os.availableParallelism?.() ?? os.cpus().length;
  try {
    nproc = Number(execFileSync('nproc', { encoding: 'utf8' }).trim()) || nproc;
  } catch {
    // keep Node's answer
  }
  return {
    nproc,
    cpuModel,
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    openFiles: openFileLimit(),
  };
}

/**
 * TCP listen-queue drops on this machine (network namespace) so far: ListenDrops from
 * /proc/net/netstat. A burst of connections beyond a listener's backlog shows here, and costs the
 * dropped clients a 1 s SYN retransmit: a measurement artefact to rule out.
 */
export function listenDrops(): number {
  try {
    const lines = fs.readFileSync('/proc/net/netstat', 'utf8').split('\n');
    for (let i = 0; i + 1 < lines.length; i++) {
      if (!lines[i]!.startsWith('TcpExt:')) continue;
      const names = lines[i]!.split(/\s+/);
      const values = lines[i + 1]!.split(/\s+/);
      const k = names.indexOf('ListenDrops');
      return k === -1 ? 0 : Number(values[k]);
    }
  } catch {
    // not Linux, or no /proc/net
  }
  return 0;
}

/** 1-minute load average, from /proc/loadavg. */
export function loadAverage(): number {
  return os.loadavg()[0] ?? 0;
}
