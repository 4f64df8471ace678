// upstream/client.ts: the one axios instance that talks to DeepSeek: keep-alive agents with a
// bounded pool, the bearer key (set here and nowhere else), a connect time limit, and one abort
// handle per request. Resolves when response headers arrive; the body stays a stream.

import http from 'node:http';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { releaseHead } from '../flat';
import axios, {
  type AxiosInstance,
  type AxiosResponse,
  type InternalAxiosRequestConfig,
} from 'axios';

export interface UpstreamClientOptions {
  baseUrl: string;
  apiKey: string;
  maxSockets: number;
  connectTimeoutMs: number;
}

export interface UpstreamResponse {
  status: number;
  headers: Record<string, unknown>;
  body: Readable;
}

export interface UpstreamClient {
  /**
   * POST a JSON body (an object, or the same already serialised: it is sent as is); resolves
   * with the status and the unread body stream. `abort` cancels it, before or after the headers.
   */
  post(path: string, body: unknown, abort: UpstreamAbort): Promise<UpstreamResponse>;
  /** Close pooled sockets. */
  close(): void;
}

/**
 * Cancels one upstream request. An AbortController costs an EventTarget and a listener per
 * request inside http.request (about 4% of the CPU of a short stream in the profile); this is a
 * field and a callback. Abort it with a reason; the request fails with `UpstreamAbortedError`.
 */
export class UpstreamAbort {
  reason: unknown = undefined;
  aborted = false;
  /**
   * Set by the client while the request is in flight: the request, destroyed on abort. A field,
   * not a closure over it (a closure and its context per open stream).
   */
  request: { destroy(err: Error): unknown } | undefined = undefined;
  /** Or a callback, for a client that has no such request (a test's fake). */
  onAbort: (() => void) | undefined = undefined;

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const req = this.request;
    this.request = undefined;
    req?.destroy(new UpstreamAbortedError());
    const f = this.onAbort;
    this.onAbort = undefined;
    f?.();
  }
}

export class UpstreamAbortedError extends Error {
  readonly code = 'UPSTREAM_ABORTED';
  constructor() {
    super('the upstream request was aborted');
  }
}

/** Thrown (as the abort reason) when the TCP/TLS connect takes too long. */
export class ConnectTimeoutError extends Error {
  readonly code = 'UPSTREAM_CONNECT_TIMEOUT';
  constructor(ms: number) {
    super(`connect to upstream took longer than ${ms} ms`);
  }
}

/** The adapter's response headers for axios (see post()). */
const NO_HEADERS = {} as AxiosResponse['headers'];

// The closure below outlives the request's set-up (the socket's listener until it connects or
// closes), so it is made here, where it holds only what it uses: made inside the adapter, it
// kept its whole scope alive, axios's config and the promise's resolve with its response
// included.

function ignore(): void {}

/** Axios's response (its data the raw body stream) as the engine takes it. */
function upstreamResponse(res: AxiosResponse): UpstreamResponse {
  const stream = res.data as IncomingMessage;
  return { status: res.status, headers: stream.headers, body: stream };
}

/** Destroy the request if its fresh socket has not connected within `ms`. */
function armConnectLimit(
  req: http.ClientRequest,
  socket: Socket,
  ms: number,
  secure: boolean,
): void {
  const timer = setTimeout(() => req.destroy(new ConnectTimeoutError(ms)), ms);
  timer.unref();
  const connected = secure ? 'secureConnect' : 'connect';
  const clear = (): void => {
    clearTimeout(timer);
    // Either event ends the wait: the other listener goes too (a pooled socket lives on).
    socket.off(connected, clear);
    socket.off('close', clear);
  };
  socket.once(connected, clear);
  socket.once('close', clear);
}

export function createUpstreamClient(opts: UpstreamClientOptions): UpstreamClient {
  const agentOptions = { keepAlive: true, maxSockets: opts.maxSockets, maxFreeSockets: 64 };
  const httpAgent = new http.Agent(agentOptions);
  const httpsAgent = new https.Agent(agentOptions);

  // Where every request goes: parsed once, not per request.
  const base = new URL(opts.baseUrl);
  const https_ = base.protocol === 'https:';
  const transport = https_ ? https : http;
  const agent = https_ ? httpsAgent : httpAgent;
  const basePath = base.pathname.replace(/\/$/, '');
  // An IPv6 literal comes bracketed (`[::1]`): the socket wants the address alone.
  const hostname = base.hostname.startsWith('[') ? base.hostname.slice(1, -1) : base.hostname;

  // Our own axios adapter: a plain http(s).request that resolves at the response headers with
  // the body as the raw IncomingMessage. Axios's Node adapter does far more per request (proxy
  // and redirect handling, progress and decompression streams); the profile showed it as the
  // largest share of per-request CPU (docs/BENCHMARKS.md). Axios still owns the config and the
  // key header. It also arms the connect time limit on fresh sockets.
  const adapter = (config: InternalAxiosRequestConfig): Promise<AxiosResponse> =>
    new Promise((resolve, reject) => {
      const abort = (config as { upstreamAbort?: UpstreamAbort }).upstreamAbort;
      if (abort?.aborted) {
        reject(new UpstreamAbortedError());
        return;
      }
      const data = config.data as string | undefined; // post() serialises every body
      const req = transport.request({
        protocol: base.protocol,
        hostname,
        port: base.port,
        path: basePath + (config.url ?? ''),
        method: (config.method ?? 'post').toUpperCase(),
        headers: requestHead(data),
        agent,
      });
      if (abort) abort.request = req;
      req.once('socket', (socket: Socket) => {
        if (socket.connecting) armConnectLimit(req, socket, opts.connectTimeoutMs, https_);
      });
      req.once('response', (res) => {
        // Later errors are the body's (the engine reads them there); this listener would keep
        // the settled promise, its response and axios's config for the whole stream.
        req.off('error', reject);
        req.on('error', ignore);
        // The request's head (the key's header in it) is long written: let Node's copy go.
        releaseHead(req);
        resolve({
          data: res,
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? '',
          // post() reads the headers from `data` (Node's, already lower-cased): axios would
          // copy and re-normalise every upstream header into an AxiosHeaders per response.
          headers: NO_HEADERS,
          config,
          request: req,
        });
      });
      req.once('error', reject);
      req.end(data);
    });

  // The request head, as a flat [name, value, ...] list: Node then writes it in one go, with no
  // setHeader per header and no header map kept for the request's life (as it does for an
  // object). It also means Host and Content-Length are ours to send (Node adds Connection). The
  // adapter sends this head for every request, the key's header included; nothing sets per-
  // request headers through axios, so axios keeps none either (see the defaults below).
  const fixedHead = [
    'Host',
    base.host,
    'Authorization',
    `Bearer ${opts.apiKey}`,
    'Content-Type',
    'application/json',
    'Accept',
    'text/event-stream, application/json',
    'Accept-Encoding',
    'identity', // compression would make zlib buffer tokens
  ];
  const requestHead = (data: string | undefined): string[] =>
    fixedHead.concat('Content-Length', String(data === undefined ? 0 : Buffer.byteLength(data)));
  const instance: AxiosInstance = axios.create({ adapter });
  // Axios merges the instance defaults into every request's config, key by key and deep into
  // objects, arrays copied. Our adapter reads only the request's url, method, data and abort
  // handle, and resolves with the status and the body stream itself: axios's validateStatus and
  // responseType are for its own adapters, the base URL is the adapter's, and with no transforms
  // at all axios runs none (bodies arrive serialised, for the journal; responses stay streams).
  // So the defaults keep the adapter alone (without it axios would use its own adapter, and the
  // body would no longer be the raw stream): the inherited ones (timeouts, size limits, XSRF
  // names, the FormData env, per-method header groups) cost a merge on every request for
  // nothing. Measured (docs/BENCHMARKS.md): 40% less CPU per request in axios for the first
  // cut to six keys, and about 3 µs a request in axios's pipeline alone for the cut to one.
  const defaults = instance.defaults as unknown as Record<string, unknown>;
  for (const key of Object.keys(defaults)) if (key !== 'adapter') delete defaults[key];

  return {
    post(path, body, abort) {
      const data = typeof body === 'string' ? body : JSON.stringify(body);
      // request(), not post(): post() merges its arguments into a config once more first.
      // Not an async function: its own promise and await were one more microtask between the
      // response's headers and the engine.
      return instance
        .request({ method: 'post', url: path, data, upstreamAbort: abort } as object)
        .then(upstreamResponse);
    },
    close() {
      httpAgent.destroy();
      httpsAgent.destroy();
    },
  };
}
