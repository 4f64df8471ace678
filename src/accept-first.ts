// accept-first.ts: during a burst of new connections, accept them all before serving the requests
// that came on them.
//
// Node 20's libuv accepts one connection per event-loop turn. When a burst of clients connects
// while the server is already serving the first requests of the burst, the turns grow long with
// those requests' set-up (and with the tokens of the streams already open), and the connections
// still waiting in the kernel's accept queue get one turn each: in the bench's 1000 slow streams,
// the last 100-250 connections of a burst waited 1 to 2.5 s for their first token (one round:
// 786 accepted within 187 ms, the other 190 over 1,679 ms; docs/BENCHMARKS.md, "Changes since
// the 09:18 run", item 1).
//
// So a request that arrives in a turn that accepted a connection waits (it is queued, its body
// buffered by Node as usual): the loop then turns without waiting (an Immediate is pending),
// accepting one connection per turn at the cost of reading their requests, and the queue is
// served, in order, after the first turn that accepts nothing, or once its oldest request has
// waited its limit (BURST_WAIT_MS; createHttpServer keeps it under a quarter of the request
// timeout, which the wait counts against). A request whose client left while it waited is
// dropped: nothing is started for it. With no burst under way a request is served in the turn
// it arrives, as before; during one, requests on kept-alive connections wait with the others.
// Only the TCP accept is waited for: under HTTPS the handshakes come after, in their own turns.
// Steady churn of one new connection or more per turn looks like a burst: each request then
// waits up to the limit.

import type http from 'node:http';
import { clientGone } from './middleware/errors';

/**
 * The longest a request waits for a burst's connections to be accepted (ms). Cutting a burst
 * short costs a turn per connection left in the queue once the first streams run (seconds, in
 * the bench); waiting costs what it waits. At 50 ms, a bench round whose accepts were slowed by
 * scavenges and the parsing of the requests already in had 778 of its 1000 connections in when
 * the wait ran out, and the other 222 took 863 ms more.
 */
export const BURST_WAIT_MS = 200;

type Listener = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** The server's request listener, wrapped; call `accepted()` on every 'connection'. */
export class AcceptFirst {
  /** A connection was accepted since the last check: more may be waiting. */
  private acceptedInTurn = false;
  private checkScheduled = false;
  private reqs: http.IncomingMessage[] = [];
  private ress: http.ServerResponse[] = [];
  /** Requests taken off the queue whose Immediate has not run yet: later ones queue behind. */
  private serving = 0;
  /** When the oldest queued request arrived (performance.now()). */
  private since = 0;
  /** Requests served after waiting, and requests dropped because their client left. */
  waited = 0;
  dropped = 0;

  constructor(
    private readonly listener: Listener,
    readonly maxWaitMs = BURST_WAIT_MS,
  ) {}

  /** Requests held here, not yet handed to the listener. */
  get pending(): number {
    return this.reqs.length + this.serving;
  }

  /**
   * Resolves once nothing is held (or at `deadline`, a Date.now() time): the shutdown lets the
   * held requests reach the app, where they are answered, before it closes the connections.
   */
  async idle(deadline: number): Promise<void> {
    while (this.pending > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** For the server's 'connection' event. */
  readonly accepted = (): void => {
    this.acceptedInTurn = true;
    this.scheduleCheck();
  };

  /** For the server's 'request' event. */
  readonly request = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (!this.acceptedInTurn && this.reqs.length === 0 && this.serving === 0) {
      this.listener(req, res);
      return;
    }
    if (this.reqs.length === 0) this.since = performance.now();
    this.reqs.push(req);
    this.ress.push(res);
    this.scheduleCheck();
  };

  private scheduleCheck(): void {
    if (this.checkScheduled) return;
    this.checkScheduled = true;
    setImmediate(check, this);
  }

  /** After the turn's I/O: go on accepting, or serve the queue. */
  onCheck(): void {
    this.checkScheduled = false;
    const accepting = this.acceptedInTurn;
    this.acceptedInTurn = false;
    if (this.reqs.length === 0) return;
    if (accepting && performance.now() - this.since < this.maxWaitMs) {
      // The pending Immediate keeps the next poll from blocking: the next turn comes at once.
      this.scheduleCheck();
      return;
    }
    // Each in an Immediate of its own, as Node serves requests that arrive in one turn: one
    // callback each, with the promises it settled run before the next one starts. Served in one
    // loop, a burst's requests all ran up to their first await before any went on: the requests
    // rate limiter then gave every one of them the count after the last (its memory store hands
    // out one object per client), and refused them all.
    const reqs = this.reqs;
    const ress = this.ress;
    this.reqs = [];
    this.ress = [];
    this.serving += reqs.length;
    for (let i = 0; i < reqs.length; i++) setImmediate(serveOne, this, reqs[i]!, ress[i]!);
  }

  /** One waiting request, in its own Immediate. */
  serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.serving--;
    if (clientGone(res)) {
      this.dropped++;
      return;
    }
    this.waited++;
    this.listener(req, res);
  }
}

/** `listener` serves `server`'s requests, each burst of connections accepted first. */
export function serveAcceptFirst(
  server: http.Server,
  listener: Listener,
  maxWaitMs = BURST_WAIT_MS,
): AcceptFirst {
  const first = new AcceptFirst(listener, maxWaitMs);
  server.on('connection', first.accepted);
  server.on('request', first.request);
  return first;
}

function check(a: AcceptFirst): void {
  a.onCheck();
}

function serveOne(a: AcceptFirst, req: http.IncomingMessage, res: http.ServerResponse): void {
  a.serve(req, res);
}
