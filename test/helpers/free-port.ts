// test/helpers/free-port.ts: a loopback port that was free a moment ago (listen(0), then close),
// for servers we start as separate processes (redis-server). Used by the tests and the bench.

import net from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/**
 * A loopback port nothing listens on, for an upstream or a Redis that refuses connections. Not
 * a freePort(): another test file, running at the same time, may listen on that one a moment
 * later (a listen(0) picks from the ephemeral range) and answer instead. Port 1 is outside
 * that range, and no test or service here listens on it.
 */
export const REFUSED_PORT = 1;
