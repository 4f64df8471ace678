// writeChunk frames a chunked body's write itself, in one socket write: the bytes on the wire
// must be exactly what Node's own framing makes, for every kind of response Node may be in.

import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { writeChunk } from '../../src/format/chunk';

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** A loopback server answering with `handler` while `use` runs; closed after, whatever happens. */
async function withServer<T>(handler: Handler, use: (port: number) => Promise<T>): Promise<T> {
  const server = http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    return await use((server.address() as AddressInfo).port);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
}

/** Send `raw` on a new connection; resolve with every byte received until the server closes. */
function rawExchange(port: number, raw: string, endAfter?: (got: string) => boolean) {
  return new Promise<string>((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(raw));
    let got = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      got += d;
      if (endAfter?.(got)) sock.end();
    });
    sock.on('end', () => resolve(got));
    sock.on('error', reject);
  });
}

const GET_CLOSE = 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';

/** The whole raw response `handler` gives one HTTP/1.1 request on its own connection. */
const respond = (handler: Handler) => withServer(handler, (port) => rawExchange(port, GET_CLOSE));

const bodyOf = (response: string) => response.slice(response.indexOf('\r\n\r\n') + 4);

// The pieces a stream writes: ASCII, UTF-8 text given as latin1 bytes (as the SSE sink does),
// a UTF-8 string, a Buffer.
type Piece = [string | Buffer, 'latin1' | 'utf8'];
const PIECES: Piece[] = [
  ['data: {"content":"Hel"}\n\n', 'latin1'],
  [Buffer.from('data: 世界 😀\n\n', 'utf8').toString('latin1'), 'latin1'],
  ['é ünïcödé and more', 'utf8'],
  [Buffer.from('raw bytes \u2603'), 'utf8'],
];

const bytesOf = ([data, enc]: Piece): Buffer =>
  typeof data === 'string' ? Buffer.from(data, enc) : data;

function writeAll(res: http.ServerResponse): void {
  for (const [data, enc] of PIECES) writeChunk(res, data, enc);
}

function expectedChunks(): string {
  return PIECES.map((p) => {
    const bytes = bytesOf(p);
    return `${bytes.length.toString(16)}\r\n${bytes.toString('latin1')}\r\n`;
  }).join('');
}

describe('writeChunk', () => {
  it('puts on the wire exactly the chunks Node would, then Node ends the body once', async () => {
    const got = await respond((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      writeAll(res);
      res.end('last');
    });
    expect(got).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(got).toMatch(/\r\nTransfer-Encoding: chunked\r\n/i);
    expect(bodyOf(got)).toBe(expectedChunks() + '4\r\nlast\r\n0\r\n\r\n');
  });

  it("is read back whole by Node's own HTTP client, text and bytes alike", async () => {
    const handler: Handler = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      writeAll(res);
      res.end();
    };
    const body = await withServer(
      handler,
      (port) =>
        new Promise<Buffer>((resolve, reject) => {
          http
            .get({ port, host: '127.0.0.1' }, (res) => {
              const parts: Buffer[] = [];
              res.on('data', (d: Buffer) => parts.push(d));
              res.on('end', () => resolve(Buffer.concat(parts)));
            })
            .on('error', reject);
        }),
    );
    expect(body.equals(Buffer.concat(PIECES.map(bytesOf)))).toBe(true);
  });

  it('writes an HTTP/1.0 body (no chunks) as is, and a write before the head as Node does', async () => {
    const handler: Handler = (_req, res) => {
      // No head yet: this write makes it (chunked for 1.1), so Node frames it itself.
      writeChunk(res, 'first,', 'latin1');
      writeAll(res);
      res.end();
    };
    const [v10, v11] = await withServer(handler, async (port) => [
      await rawExchange(port, 'GET / HTTP/1.0\r\nHost: x\r\n\r\n'),
      await rawExchange(port, GET_CLOSE),
    ]);
    expect(v10).not.toMatch(/Transfer-Encoding/i);
    const plain = PIECES.map((p) => bytesOf(p).toString('latin1')).join('');
    expect(bodyOf(v10!)).toBe('first,' + plain);
    expect(bodyOf(v11!)).toBe('6\r\nfirst,\r\n' + expectedChunks() + '0\r\n\r\n');
  });

  it('keeps pipelined responses apart and in order: the second waits for its turn', async () => {
    let n = 0;
    const handler: Handler = (_req, res) => {
      const me = ++n;
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      // The second response writes while the first still owns the socket.
      writeChunk(res, `r${me}-a`, 'latin1');
      setTimeout(
        () => {
          writeChunk(res, `r${me}-b`, 'latin1');
          res.end();
        },
        me === 1 ? 50 : 0,
      );
    };
    const req = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';
    const got = await withServer(handler, (port) =>
      rawExchange(port, req + req, (g) => (g.match(/0\r\n\r\n/g) ?? []).length === 2),
    );
    const responses = got.split(/(?=HTTP\/1\.1 200)/);
    expect(responses).toHaveLength(2);
    expect(bodyOf(responses[0]!)).toBe('4\r\nr1-a\r\n4\r\nr1-b\r\n0\r\n\r\n');
    expect(bodyOf(responses[1]!)).toBe('4\r\nr2-a\r\n4\r\nr2-b\r\n0\r\n\r\n');
  });

  it("reports backpressure and the response's 'drain' comes when the client reads again", async () => {
    let drained: Promise<void> | undefined;
    let sawFull = false;
    const big = 'x'.repeat(64 * 1024);
    const handler: Handler = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      for (let i = 0; i < 200 && !sawFull; i++) sawFull = !writeChunk(res, big, 'latin1');
      drained = new Promise<void>((r) => res.once('drain', () => r()));
      void drained.then(() => res.end());
    };
    await withServer(handler, async (port) => {
      const sock = net.connect(port, '127.0.0.1');
      sock.pause(); // not reading: the server's socket fills
      sock.write(GET_CLOSE);
      await new Promise((r) => setTimeout(r, 200));
      expect(sawFull).toBe(true);
      let bytes = 0;
      sock.on('data', (d: Buffer) => (bytes += d.length));
      const ended = new Promise((r) => sock.on('end', r));
      sock.resume();
      await drained;
      await ended;
      expect(bytes).toBeGreaterThan(64 * 1024);
    });
  });

  it('leaves an empty write alone: it must not end the body', async () => {
    const got = await respond((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      writeChunk(res, 'a', 'latin1');
      writeChunk(res, '', 'latin1');
      writeChunk(res, Buffer.alloc(0));
      writeChunk(res, 'b', 'utf8');
      res.end();
    });
    expect(bodyOf(got)).toBe('1\r\na\r\n1\r\nb\r\n0\r\n\r\n');
  });

  it('sends a waiting head as Node would, even when the first write is a UTF-8 string', async () => {
    const got = await respond((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'X-Name': 'caf\u00e9' });
      writeChunk(res, 'data: \u4e16\n\n', 'utf8');
      res.end();
    });
    // Node writes header values as latin1: one byte 0xE9, not UTF-8's two.
    expect(got).toContain('X-Name: caf\u00e9\r\n');
    const bytes = Buffer.from('data: \u4e16\n\n', 'utf8');
    expect(bodyOf(got)).toBe(
      `${bytes.length.toString(16)}\r\n${bytes.toString('latin1')}\r\n0\r\n\r\n`,
    );
  });

  it('keeps the order of writes made while the response is corked', async () => {
    const got = await respond((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      writeChunk(res, 'one', 'latin1');
      setImmediate(() => {
        res.cork();
        res.write('two');
        writeChunk(res, 'three', 'latin1');
        res.uncork();
        res.end();
      });
    });
    expect(bodyOf(got)).toBe('3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n');
  });
});
