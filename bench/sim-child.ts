// bench/sim-child.ts: the DeepSeek simulator in its own process, in fast mode: no pacing unless a
// prompt asks for it (`[[tokens=N delay=MS frag=N coalesce]]`), on a loopback port of its own.

import net from 'node:net';
import { startSimulator } from '../src/simulator/server';
import { serveParent } from './child-ipc';

// startSimulator() listens with Node's default backlog (511). When 1000 streams open at once, the
// relay in front opens ~1000 upstream connections in a burst; an accept queue of 511 overflows,
// the kernel drops SYNs and those connections wait 1 s or 3 s for a retransmit: an artefact of
// the bench, not of the relay (and it punishes the faster relay most). Listen with 4096 instead.
// The server is kept, for the accept counts (child-ipc.ts).
const listening: net.Server[] = [];
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (this: net.Server, ...args: unknown[]) {
  const [port, host, cb] = args;
  if (typeof port === 'number' && typeof host === 'string' && typeof cb === 'function') {
    listening.push(this);
    return listen.call(this, { port, host, backlog: 4096 }, cb as () => void);
  }
  return (listen as (...a: unknown[]) => net.Server).apply(this, args);
} as typeof listen;

async function main(): Promise<void> {
  const sim = await startSimulator({ port: 0, host: '127.0.0.1', tokenDelayMs: 0 });
  serveParent(sim.port, () => sim.close(), listening[0]);
}

void main();
