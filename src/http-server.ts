// http-server.ts: the HTTP(S) server that serves the app: server.ts listens with it, and the
// bench and the tests build theirs here, so all three run the same server.
//
// Express gives every request and response the app's prototypes with Object.setPrototypeOf, on
// every request. V8 then gives each req and res a hidden class of its own (a new map and
// descriptor array, about 2 KiB per request), sometimes in dictionary mode, and every property
// access on them, in Node's HTTP code as in Express, goes through megamorphic lookups
// (expressjs/express#5998). Here Node builds req and res from classes whose prototypes ARE the
// app's: Express's setPrototypeOf finds the prototype already set and changes nothing.

import http from 'node:http';
import https from 'node:https';
import type { Express } from 'express';
import type { Metrics } from './metrics';
import { BURST_WAIT_MS, serveAcceptFirst, type AcceptFirst } from './accept-first';
import { flattenHead, HEADERS_NOT_READ_BACK } from './flat';
import { answerClientError, RESPONSE_WATCHER, type ResponseWatcher } from './middleware/errors';

export interface RequestClasses {
  IncomingMessage: typeof http.IncomingMessage;
  ServerResponse: typeof http.ServerResponse;
}

/**
 * Make the app's request and response prototypes the prototypes of two classes Node can
 * construct, and return the classes (for http.createServer's options). Called once, by
 * createApp: `app.request` and `app.response` keep what Express put there (their prototypes,
 * express.request and express.response, and `app`).
 */
export function bindRequestClasses(app: Express): RequestClasses {
  // Subclasses, not functions calling the constructors: V8 sizes a derived class's objects from
  // the whole constructor chain, so req and res keep their fields in-object (fast properties).
  class ProxyRequest extends http.IncomingMessage {}
  class ProxyResponse extends http.ServerResponse {
    // Made here, so Express keeps it: its own, Object.create(null), is an object V8 keeps in
    // dictionary mode (a hash table of about 360 B per response, for the seven locals we set).
    // This one inherits nothing either, but its properties share hidden classes.
    locals: object = Object.create(LOCALS_PROTO) as object;
    // Built by this class, so served by createHttpServer's server: nothing there reads a
    // stream's headers back once they are sent (flat.ts). Not on the prototype: an app mounted
    // in another server gets this prototype too (Express sets it), and there someone may.
    readonly [HEADERS_NOT_READ_BACK] = true;
    // A field from the start, so a stream's watchResponse() changes no hidden class.
    [RESPONSE_WATCHER]: ResponseWatcher | undefined = undefined;
  }
  (ProxyResponse.prototype as { writeHead: unknown }).writeHead = writeHeadFlat;
  adopt(ProxyRequest.prototype, app.request as object, app);
  adopt(ProxyResponse.prototype, app.response as object, app);
  (app as { request: unknown }).request = ProxyRequest.prototype;
  (app as { response: unknown }).response = ProxyResponse.prototype;
  return {
    IncomingMessage: ProxyRequest,
    ServerResponse: ProxyResponse as unknown as typeof http.ServerResponse,
  };
}

/** The prototype of every res.locals: no properties, no prototype. */
const LOCALS_PROTO = Object.create(null) as object;

const nodeWriteHead = http.ServerResponse.prototype.writeHead;

/** Node's writeHead, then the head it built is made one string (see flattenHead). */
function writeHeadFlat(this: http.ServerResponse, ...args: unknown[]): http.ServerResponse {
  (nodeWriteHead as (...a: unknown[]) => unknown).apply(this, args);
  flattenHead(this);
  return this;
}

/** `proto` takes the place of `current` (Object.create(express.x, { app })): same chain, same app. */
function adopt(proto: object, current: object, app: Express): void {
  Object.setPrototypeOf(proto, Object.getPrototypeOf(current) as object);
  Object.defineProperty(proto, 'app', {
    configurable: true,
    enumerable: true,
    writable: true,
    value: app,
  });
}

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

/**
 * The server for `app` (built by createApp, so it has its request classes): HTTPS when `tls` is
 * given. Malformed and too slow requests get the SPEC's JSON error (400, 408); idle keep-alive
 * sockets stay 65 s (longer than the usual load balancer's 60 s); a burst of new connections is
 * accepted before the requests on them are served (accept-first.ts).
 */
export function createHttpServer(
  app: Express & { requestClasses: RequestClasses; metrics: Metrics },
  requestTimeoutMs: number,
  tls?: TlsFiles,
): (http.Server | https.Server) & { readonly acceptFirst: AcceptFirst } {
  const options = {
    ...app.requestClasses,
    // How often Node looks for requests past their time (its default, 30 s, is coarse).
    connectionsCheckingInterval: Math.min(30_000, Math.max(50, Math.floor(requestTimeoutMs / 4))),
  };
  const server = tls
    ? https.createServer({ ...options, cert: tls.cert, key: tls.key })
    : http.createServer(options);
  // The wait counts against the request timeout (a body larger than Node's buffer is not all
  // read while its request waits): at most a quarter of it.
  const acceptFirst = serveAcceptFirst(
    server,
    app,
    Math.min(BURST_WAIT_MS, Math.max(1, Math.floor(requestTimeoutMs / 4))),
  );
  app.metrics.watchBursts(acceptFirst);
  server.on('clientError', answerClientError);
  // Node's requestTimeout covers receiving the request only, never the response: a stream runs
  // for as long as it runs. Without it (it was 0) a client sending its body a byte at a time
  // held a socket forever. headersTimeout must not exceed it.
  server.requestTimeout = requestTimeoutMs;
  server.headersTimeout = Math.min(server.headersTimeout, requestTimeoutMs);
  server.keepAliveTimeout = 65_000;
  return Object.assign(server, { acceptFirst });
}
