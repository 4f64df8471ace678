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
