// flat.ts: strings kept for a long time, made one string, or let go once used.
//
// V8 keeps a string built by concatenation as a tree of its pieces (a cons string) until
// something reads its characters; reading one makes V8 flatten it in place, after which it is
// one string and the pieces are garbage. Worth doing for strings that live as long as a stream
// and are read again and again (an HTTP head, an SSE id prefix); never on the per-token path.

import { OutgoingMessage } from 'node:http';

let _sink = 0;

/** `s`, flattened in place (the same string; only its representation changes). */
export function flatten(s: string): string {
  // The result is kept so that the read cannot be optimised away.
  if (s.length > 0) _sink ^= s.charCodeAt(s.length - 1);
  return s;
}

/**
 * Node builds an HTTP message's head (`_header`, kept until the message is done) by
 * concatenation, one piece per header line. A response with helmet's headers was about 90 string
 * objects (2.9 KiB) held for the life of each stream; flattened, it is one. Call once the head
 * exists (after writeHead, or a request's end()). Read-only: the head is the same string.
 */
export function flattenHead(message: object): void {
  const head = (message as { _header?: unknown })._header;
  if (typeof head === 'string') flatten(head);
}

/** Node's symbol for a message's header map (`setHeader` fills it), if this Node has one. */
const OUT_HEADERS = Object.getOwnPropertySymbols(new OutgoingMessage()).find(
  (s) => s.description === 'kOutHeaders',
);

/**
 * What `_header` holds once the head is on the wire. Node reads the field after that only as a
 * flag (headersSent, and the checks that refuse a second head), never its text.
 */
const HEAD_SENT = 'HTTP/1.1 (head sent)\r\n';

/**
 * Marks responses whose header map nobody reads back once the head is sent: those of the server
 * createHttpServer() builds (http-server.ts sets it on its response class). An app mounted in
 * someone else's server keeps the map, for their access log or tracing to read at 'finish'.
 */
export const HEADERS_NOT_READ_BACK = Symbol('headers not read back');

/**
 * Let go of a message's head once it has been written to the socket: the head's text (about
 * 600 B for a stream response with its security headers, 250 B for the upstream request), kept by
 * Node until the message is done: for a stream, its whole life. For responses marked
 * HEADERS_NOT_READ_BACK, also the header map the head was built from (a dictionary of ten
 * [name, value] pairs, about 770 B): getHeader() then answers undefined. headersSent stays true
 * and setHeader still throws ERR_HTTP_HEADERS_SENT. Does nothing before the head has gone out.
 */
export function releaseHead(message: object): void {
  const m = message as { _header?: unknown; _headerSent?: unknown };
  if (m._headerSent !== true || typeof m._header !== 'string') return;
  m._header = HEAD_SENT;
  if (OUT_HEADERS !== undefined && (m as Record<symbol, unknown>)[HEADERS_NOT_READ_BACK] === true)
    (m as Record<symbol, unknown>)[OUT_HEADERS] = null;
}
