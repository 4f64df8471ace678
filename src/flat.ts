// flat.ts: strings kept for a long time, made one string.
//
// V8 keeps a string built by concatenation as a tree of its pieces (a cons string) until
// something reads its characters; reading one makes V8 flatten it in place, after which it is
// one string and the pieces are garbage. Worth doing for strings that live as long as a stream
// and are read again and again (an HTTP head, an SSE id prefix); never on the per-token path.

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
