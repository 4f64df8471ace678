// bench/child-ipc.ts: the small protocol between bench/run.ts and its child processes (simulator,
// proxy, baseline), over Node's IPC channel. A child says `ready` with its port; the parent may
// ask it to collect garbage and tell its JS heap use right after (for the memory probe), to tell
// the time
// on its monotonic clock (to cut a --cpu-prof profile to the measured window), for the longest
// its event loop was blocked since it was last asked (a stall delays every stream it serves), for
// the connections it accepted since it was last asked and the time from the first to the last
// (libuv accepts one connection per event-loop turn: a burst waits in the kernel's accept queue
// for as many turns), or to exit cleanly (so --cpu-prof gets to write its file).

import type { Server } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';

export type ParentMessage = {
  id: number;
  cmd: 'gc' | 'now' | 'stall' | 'acceptCount' | 'acceptSpan' | 'exit';
};
export type ChildMessage =
  { type: 'ready'; port: number; pid: number } | { type: 'reply'; id: number; value: number };

/** In a child: announce the port and serve the parent's commands. */
export function serveParent(
  port: number,
  onExit: () => Promise<void> | void,
  server?: Server,
): void {
  const send = (m: ChildMessage) => process.send?.(m);
  // A libuv timer every 10 ms in every child alike: the pipe and the proxy pay the same.
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  // Every child alike: one clock reading per accepted connection.
  let accepted = 0;
  let firstAccept = 0;
  let lastAccept = 0;
  server?.on('connection', () => {
    lastAccept = performance.now();
    if (accepted++ === 0) firstAccept = lastAccept;
  });
  process.on('message', (raw: unknown) => {
    const m = raw as ParentMessage;
    switch (m.cmd) {
      case 'gc': {
        // Live JS objects (V8 heap used) plus memory held outside it by JS objects (Buffers),
        // read in the same handler as the collection: read on a later message, it counted the
        // garbage of the event-loop turns in between, with many streams open the relay's
        // allocation per turn (for the proxy 9-11 KiB per open stream, for the pipe 4-6), not
        // what a stream keeps (docs/BENCHMARKS.md, "Changes since the 07:18 run").
        const gc = (globalThis as { gc?: () => void }).gc;
        if (gc) {
          gc();
          gc();
        }
        const u = process.memoryUsage();
        send({ type: 'reply', id: m.id, value: u.heapUsed + u.external });
        break;
      }
      case 'stall':
        // ms; the histogram starts again, so the next answer covers the next run only.
        send({ type: 'reply', id: m.id, value: delay.max / 1e6 });
        delay.reset();
        break;
      case 'acceptCount':
        send({ type: 'reply', id: m.id, value: accepted });
        break;
      case 'acceptSpan':
        // ms from the first to the last accept; the count starts again (ask for it first).
        send({ type: 'reply', id: m.id, value: accepted > 1 ? lastAccept - firstAccept : 0 });
        accepted = 0;
        break;
      case 'now':
        // Microseconds on the monotonic clock: the clock V8 stamps profile samples with.
        send({ type: 'reply', id: m.id, value: Number(process.hrtime.bigint() / 1000n) });
        break;
      case 'exit':
        void Promise.resolve(onExit()).finally(() => {
          send({ type: 'reply', id: m.id, value: 0 });
          // process.exit (not a signal) so that --cpu-prof writes its profile.
          setImmediate(() => process.exit(0));
        });
        break;
    }
  });
  // The parent died: do not linger.
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready', port, pid: process.pid });
}
