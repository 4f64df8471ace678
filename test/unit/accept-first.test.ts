// AcceptFirst: a request that arrives while connections are being accepted waits for the burst to
// be accepted (a turn that accepts nothing), for BURST_WAIT_MS at most; with no burst it is served
// at once; one whose client left meanwhile is dropped.

import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { AcceptFirst, serveAcceptFirst } from '../../src/accept-first';

type Req = http.IncomingMessage;
type Res = http.ServerResponse;

/** A request/response pair as clientGone() reads it. */
function pair(id: number): { req: Req; res: Res & { id: number } } {
  const socket = { destroyed: false };
  const req = { socket, id } as unknown as Req;
  const res = { id, destroyed: false, socket, writableFinished: false, req } as unknown as Res & {
    id: number;
  };
  return { req, res };
}

/** The id pair() gave a response. */
const idOf = (res: Res): number => (res as Res & { id: number }).id;

/** An AcceptFirst whose listener records the ids it is handed, in order. */
function recording(maxWaitMs?: number): { first: AcceptFirst; served: number[] } {
  const served: number[] = [];
  const first = new AcceptFirst((_req, res) => served.push(idOf(res)), maxWaitMs);
  return { first, served };
}

/** One event-loop turn: resolves in the check phase after the checks already scheduled. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('AcceptFirst', () => {
  it('serves a request at once when no connection was accepted in its turn', () => {
    const { first, served } = recording();
    const { req, res } = pair(1);
    first.request(req, res);
    expect(served).toEqual([1]);
  });

  it('holds requests while every turn accepts one, then serves them in order', async () => {
    const { first, served } = recording();
    first.accepted();
    for (let i = 1; i <= 3; i++) {
      const { req, res } = pair(i);
      first.request(req, res);
    }
    await turn(); // the first check: it accepted in that turn, so it goes on
    expect(served).toEqual([]);
    first.accepted(); // the next turn accepts one more, and a request comes on a connection
    const { req, res } = pair(4);
    first.request(req, res);
    await turn();
    expect(served).toEqual([]);
    await turn(); // a turn without an accept: the burst is in, and each gets an Immediate
    await turn();
    expect(served).toEqual([1, 2, 3, 4]);
    expect(first.waited).toBe(4);

    const late = pair(5); // the queue is empty again and nothing was accepted: at once
    first.request(late.req, late.res);
    expect(served).toEqual([1, 2, 3, 4, 5]);
  });

  it("serves each waiting request in its own callback: one's promises settle before the next", async () => {
    // express-rate-limit's memory store hands every request of a client the same counter
    // object: run back to back, a burst's requests all read the count after the last one.
    const steps: string[] = [];
    const first = new AcceptFirst((_req, res) => {
      const id = idOf(res);
      steps.push(`start ${id}`);
      void Promise.resolve().then(() => steps.push(`then ${id}`));
    });
    first.accepted();
    for (let i = 1; i <= 3; i++) {
      const { req, res } = pair(i);
      first.request(req, res);
    }
    await turn();
    await turn();
    await turn();
    expect(steps).toEqual(['start 1', 'then 1', 'start 2', 'then 2', 'start 3', 'then 3']);
  });

  it('a request that comes while the waiting ones are being served queues behind them', async () => {
    const { first, served } = recording();
    first.accepted();
    const a = pair(1);
    first.request(a.req, a.res);
    await turn(); // the first check: it accepted in that turn, so it goes on
    await turn(); // no accept: flushed, request 1 has its Immediate, not yet run
    expect(served).toEqual([]);
    expect(first.pending).toBe(1);
    const b = pair(2);
    first.request(b.req, b.res);
    expect(served).toEqual([]);
    await turn();
    await turn();
    await turn();
    expect(served).toEqual([1, 2]);
    expect(first.pending).toBe(0);
  });

  it('a request in the turn after one that accepted, with no accept of its own, is served at once', async () => {
    const { first, served } = recording();
    first.accepted();
    await turn(); // that turn's check: nothing was waiting
    const { req, res } = pair(1);
    first.request(req, res);
    expect(served).toEqual([1]);
  });

  it('waits no longer than its limit, counted from the oldest request, while connections and requests keep coming', async () => {
    let servedAt = 0;
    const first = new AcceptFirst((_req, res) => {
      if (idOf(res) === 0 && servedAt === 0) servedAt = performance.now();
    }, 20);
    const t0 = performance.now();
    for (let i = 0; performance.now() - t0 < 300 && servedAt === 0; i++) {
      first.accepted();
      const { req, res } = pair(i);
      first.request(req, res);
      await turn();
    }
    expect(servedAt).toBeGreaterThanOrEqual(t0 + 20);
    expect(servedAt).toBeLessThan(t0 + 150);
  });

  it('idle() resolves once every held request has reached the listener', async () => {
    const { first, served } = recording();
    first.accepted();
    for (let i = 1; i <= 3; i++) {
      const { req, res } = pair(i);
      first.request(req, res);
    }
    expect(first.pending).toBe(3);
    await first.idle(Date.now() + 5000);
    expect(served).toEqual([1, 2, 3]);
    expect(first.pending).toBe(0);
  });

  it('idle() gives up at its deadline while connections keep coming', async () => {
    const first = new AcceptFirst(() => undefined, 10_000);
    const { req, res } = pair(1);
    let accepting = true;
    const keep = () => {
      first.accepted();
      if (accepting) setImmediate(keep);
    };
    keep();
    first.request(req, res);
    const t0 = Date.now();
    await first.idle(t0 + 50);
    accepting = false;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    expect(first.pending).toBe(1);
  });

  it('drops a request whose client left while it waited', async () => {
    const { first, served } = recording();
    first.accepted();
    const gone = pair(1);
    const there = pair(2);
    first.request(gone.req, gone.res);
    first.request(there.req, there.res);
    (gone.req.socket as { destroyed: boolean }).destroyed = true;
    await turn();
    await turn();
    await turn();
    expect(served).toEqual([2]);
    expect(first.dropped).toBe(1);
  });
});

describe('serveAcceptFirst on a real server', () => {
  // A client in another process connects N sockets, and once all are connected writes a request
  // on each. The server takes 0.3 ms per accept (a busy server), so its accept queue still holds
  // most of them when the requests arrive: served as they came, the first ones would be served
  // with only a few connections accepted.
  it('serves the first request of a burst once every connection of it is accepted', async () => {
    const N = 100;
    let accepted = 0;
    const acceptedWhenServed: number[] = [];
    const server = http.createServer();
    server.on('connection', () => {
      accepted++;
      const until = performance.now() + 0.3;
      while (performance.now() < until) {
        // busy
      }
    });
    // When each request arrived (before accept-first saw it): at least one must come while
    // connections still wait, or the test proves nothing.
    const acceptedWhenArrived: number[] = [];
    server.prependListener('request', () => acceptedWhenArrived.push(accepted));
    serveAcceptFirst(
      server,
      (_req, res) => {
        acceptedWhenServed.push(accepted);
        res.end('ok');
      },
      10_000, // the burst is never cut short here
    );
    await new Promise<void>((r) => server.listen({ port: 0, host: '127.0.0.1', backlog: 512 }, r));
    const port = (server.address() as AddressInfo).port;
    const client = `
      const net = require('net');
      const socks = []; let connected = 0; let answered = 0;
      for (let i = 0; i < ${N}; i++) {
        const s = net.connect(${port}, '127.0.0.1', () => {
          if (++connected === ${N}) for (const t of socks) t.write('GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');
        });
        s.on('data', () => {});
        s.on('error', (e) => { console.error('socket', i, e.message); process.exit(3); });
        s.on('end', () => { if (++answered === ${N}) process.exit(0); });
        socks.push(s);
      }
      setTimeout(() => process.exit(2), 20000);`;
    let stderr = '';
    const code = await new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, ['-e', client], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      child.on('exit', resolve);
    });
    await new Promise<void>((r) => server.close(() => r()));
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    expect(acceptedWhenServed).toHaveLength(N);
    expect(Math.min(...acceptedWhenArrived)).toBeLessThan(N);
    expect(acceptedWhenServed[0]).toBe(N);
  });
});
