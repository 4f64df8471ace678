// middleware/errors.ts: the last handlers. Unknown routes get 404, known routes with the wrong
// method 405, and every error (body-parser's included) becomes the SPEC's JSON shape.

import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { Duplex } from 'node:stream';
import type { NextFunction, Request, Response } from 'express';
import { ProxyError, STATUS_OF, asProxyError, errorBody, openAiErrorBody } from '../errors';
import type { Logger } from '../log';

export function notFound(req: Request, _res: Response, next: NextFunction): void {
  next(new ProxyError('not_found', `no route for ${req.method} ${req.path}`));
}

export function methodNotAllowed(allowed: string[]) {
  const allow = allowed.join(', ');
  return (req: Request, res: Response, next: NextFunction): void => {
    res.setHeader('Allow', allow);
    next(new ProxyError('method_not_allowed', `${req.method} is not allowed here; use ${allow}`));
  };
}

/** body-parser and raw-body errors carry `type`; map the ones a client can cause. */
function fromBodyParser(err: unknown): ProxyError | undefined {
  const type = (err as { type?: unknown } | null)?.type;
  switch (type) {
    case 'entity.parse.failed':
      return new ProxyError('invalid_request', 'the body is not valid JSON');
    case 'entity.too.large':
      return new ProxyError('payload_too_large', 'the body is larger than MAX_BODY_BYTES');
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new ProxyError('unsupported_media_type', 'unsupported body encoding or charset');
    case 'request.aborted':
    case 'request.size.invalid':
    case 'stream.encoding.set':
      return new ProxyError('invalid_request', 'the body could not be read');
    default:
      return fromClientHttpError(err);
  }
}

/**
 * A bare 400 in http-errors' shape (`expose`, `status`) with no `type`: what body-parser passes
 * on when a `Content-Encoding: gzip` (or deflate, br) body does not decompress. The client's
 * fault, not a 500 logged as our bug.
 */
function fromClientHttpError(err: unknown): ProxyError | undefined {
  const e = err as { expose?: unknown; status?: unknown } | null;
  if (e?.expose !== true || e.status !== 400) return undefined;
  return new ProxyError('invalid_request', 'the body could not be read or decompressed');
}

/** The app's error handler, as errorHandler() makes it. */
export type ErrorHandler = (err: unknown, req: Request, res: Response, next: NextFunction) => void;

function noNext(): void {}

/**
 * A route that started a stream lets Express's `next` go. Express kept it (its routers' closures
 * and the request's final handler, about 1 KiB) for as long as a handler's promise was pending
 * and the request pointed at it (`req.next`): a stream's whole life. Nothing calls it once the
 * stream has started; the stream's failure (a bug) goes to failStarted() instead.
 */
export function releaseNext(req: Request): void {
  req.next = undefined;
}

/**
 * A started stream's failure (a bug: ChatService.run fails on nothing else) to the app's error
 * handler, which Express no longer reaches for it (releaseNext). Without one, the response is cut.
 */
export function failStarted(res: Response, err: unknown, onError: ErrorHandler | undefined): void {
  if (onError) onError(err, res.req, res, noNext);
  else res.destroy();
}

export function errorHandler(log: Logger): ErrorHandler {
  return (err: unknown, req: Request, res: Response, _next: NextFunction): void => {
    const e = fromBodyParser(err) ?? asProxyError(err);
    const requestId = res.locals.requestId as string | undefined;
    if (e.code === 'internal_error')
      log.error({ requestId, err: describe(err) }, 'unhandled error');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // Nobody to answer (the client left, or its connection was answered and closed for it: a
    // request that timed out): the status it was given stays.
    if (clientGone(res)) return;
    if (e.retryAfterS !== undefined) res.setHeader('Retry-After', String(e.retryAfterS));
    // The OpenAI-compatible surface answers in the OpenAI shape, which its SDKs parse.
    const body = req.path.startsWith('/v1/')
      ? openAiErrorBody(e, requestId)
      : errorBody(e, requestId);
    res.status(e.status).json(body);
  };
}

/** Enough of an unknown error to debug it, without config objects that may hold headers. */
function describe(err: unknown): Record<string, unknown> {
  if (err instanceof Error) return { name: err.name, message: err.message, stack: err.stack };
  return { value: String(err) };
}

/**
 * The client closed the connection (its 'close' may have fired already, unheard, while the
 * request waited on Redis in a guard or for the journal): nothing more should start for it.
 * A response pipelined behind another answer on its connection has no socket of its own yet
 * (Node gives it the socket when the answer before it ends): its client is there as long as the
 * connection is.
 */
export function clientGone(res: http.ServerResponse): boolean {
  if (res.destroyed) return true;
  const socket = res.socket ?? (res.writableFinished ? null : res.req.socket);
  return socket === null || socket.destroyed;
}

/**
 * `listener` on the response's 'close', which Node emits when the response ends or its
 * connection closes; also, for a response still queued behind another answer on its connection
 * (pipelined), when that connection closes. Node says nothing to a queued response then: it
 * would stay open forever (its heartbeat writing into a buffer nobody reads), and a stream
 * answering it would run (and be billed) for nobody, its slot held. So the response is destroyed
 * first, and every check of `res.destroyed` and clientGone() sees it. For a queued response,
 * `listener` is called at most once. It is called with the response as `this`, as Node calls a
 * 'close' listener: one function can serve every response.
 */
export function onResponseClose<R extends http.ServerResponse>(
  res: R,
  listener: (this: R) => void,
): void {
  if (res.socket !== null || res.writableFinished) {
    res.on('close', listener);
    return;
  }
  let fired = false;
  const once = () => {
    if (fired) return;
    fired = true;
    forget();
    listener.call(res);
  };
  const forget = whenConnectionCloses(res.req.socket, () => {
    if (!res.destroyed) res.destroy();
    once();
  });
  res.on('close', once);
  // Its turn came: from here on, the response's own 'close' says it.
  res.once('socket', forget);
}

/** A stream's hold on its response: told of the response's 'drain', and of its end unfinished. */
export interface ResponseWatcher {
  /** The client's buffer drained: the upstream may be read again. */
  drained(): void;
  /** The response closed before it was finished: the client left. */
  left(): void;
}

/** Where watchResponse() keeps a response's watcher (a field of ProxyResponse, http-server.ts). */
export const RESPONSE_WATCHER = Symbol('response watcher');

type Watched = http.ServerResponse & { [RESPONSE_WATCHER]?: ResponseWatcher };

/**
 * `watcher` on the response's 'drain' and unfinished 'close' (as onResponseClose). The listeners
 * are two functions shared by every response, the watcher kept on the response: no closure and
 * context per stream for its length.
 */
export function watchResponse(res: http.ServerResponse, watcher: ResponseWatcher): void {
  (res as Watched)[RESPONSE_WATCHER] = watcher;
  res.on('drain', watcherDrained);
  onResponseClose(res as Watched, watcherClosed);
}

function watcherDrained(this: Watched): void {
  this[RESPONSE_WATCHER]?.drained();
}

function watcherClosed(this: Watched): void {
  if (!this.writableFinished) this[RESPONSE_WATCHER]?.left();
}

/** What waits on each connection's close (one listener per connection, however many queue). */
const onConnectionClose = new WeakMap<Duplex, Set<() => void>>();

/** Call `fn` when `connection` closes; the function returned forgets it. */
function whenConnectionCloses(connection: Duplex, fn: () => void): () => void {
  let waiting = onConnectionClose.get(connection);
  if (waiting === undefined) {
    const set = new Set<() => void>();
    onConnectionClose.set(connection, set);
    connection.once('close', () => {
      onConnectionClose.delete(connection);
      for (const f of set) f();
    });
    waiting = set;
  }
  const set = waiting;
  set.add(fn);
  return () => set.delete(fn);
}

/**
 * A request Node's HTTP parser refuses never reaches Express (the server's `clientError`): answer
 * it in the SPEC's shape too. A request line and headers over Node's limit (16 KiB by default) is
 * most often a GET prompt that is too long for a URL: 413, pointing to POST.
 */
export function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  // The bytes that failed may follow a request whose answer is still in flight on this socket
  // (pipelined; or a DELETE with an unframed body, whose body is read as the next request). A
  // response written now would land inside that answer: wait for it to finish. After it, answer
  // in turn, unless it told the client `Connection: close` (anything after that is garbage to
  // the client): then just close. Node's own handler holds back for an in-flight answer too.
  const inFlight = (socket as Duplex & { _httpMessage?: http.ServerResponse | null })._httpMessage;
  const timedOut = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'HPE_HEADERS_TIMEOUT';
  if (timedOut && inFlight && !inFlight.req.complete) {
    // The answer in flight is this very request's, waiting for a body that is not coming: it
    // would never finish. Answer in its place if it has written nothing (as Node does), else cut.
    // (A request read whole, streaming its answer, is not this: a later one timed out behind it.)
    if (inFlight.headersSent) {
      socket.destroy();
      return;
    }
    inFlight.statusCode = STATUS_OF.request_timeout; // for the request metrics
  } else if (inFlight) {
    if (!inFlight.writableFinished) {
      inFlight.once('finish', () => answerClientError(err, socket));
      inFlight.once('close', () => {
        if (!inFlight.writableFinished) socket.destroy();
      });
      return;
    }
    if (!inFlight.shouldKeepAlive) {
      socket.end();
      return;
    }
  }
  const e =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? new ProxyError(
          'payload_too_large',
          `the request line and headers are over ${http.maxHeaderSize} bytes: ` +
            'send a long prompt in a POST body',
        )
      : timedOut
        ? new ProxyError('request_timeout', 'the request took too long to arrive')
        : new ProxyError('invalid_request', 'malformed HTTP request');
  const id = randomUUID();
  const body = JSON.stringify(errorBody(e, id));
  socket.end(
    `HTTP/1.1 ${e.status} ${http.STATUS_CODES[e.status]}\r\n` +
      'Content-Type: application/json; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${id}\r\n` +
      `Connection: close\r\n\r\n${body}`,
    // A timed-out request still has its handler waiting on the socket: free it once written.
    () => {
      if (timedOut) socket.destroy();
    },
  );
}
