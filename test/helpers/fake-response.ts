// A stand-in for a ServerResponse, for tests of ResponseSink: records what is written, as bytes
// (honouring the encoding, as Node does) and as text.

export interface FakeResponse {
  headersSent: boolean;
  destroyed: boolean;
  writableEnded: boolean;
  writableLength: number;
  writeHead(): void;
  flushHeaders(): void;
  write(chunk: string | Buffer, encoding?: BufferEncoding): boolean;
  end(chunk?: string | Buffer, encoding?: BufferEncoding): void;
  destroy(): void;
}

export function fakeResponse(): { res: FakeResponse; out: Buffer[]; writes: string[] } {
  const out: Buffer[] = [];
  const writes: string[] = [];
  const res: FakeResponse = {
    headersSent: false,
    destroyed: false,
    writableEnded: false,
    writableLength: 0,
    writeHead() {
      res.headersSent = true;
    },
    flushHeaders() {},
    write(chunk, encoding) {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, encoding ?? 'utf8') : chunk;
      out.push(bytes);
      writes.push(bytes.toString('utf8'));
      return true;
    },
    end(chunk, encoding) {
      if (chunk !== undefined) res.write(chunk, encoding);
      res.writableEnded = true;
    },
    destroy() {
      res.destroyed = true;
    },
  };
  return { res, out, writes };
}
