// upstream/client.ts: the one axios instance that talks to DeepSeek: keep-alive agents with a
// bounded pool, the bearer key (set here and nowhere else), a connect time limit, and one abort
// signal per request. Resolves when response headers arrive; the body stays a stream.

import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import axios, {
  AxiosHeaders,
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
  /** POST a JSON body; resolves with the status and the unread body stream. */
  post(path: string, body: unknown, signal: AbortSignal): Promise<UpstreamResponse>;
  /** Close pooled sockets. */
  close(): void;
}

/** Thrown (as the abort reason) when the TCP/TLS connect takes too long. */
export class ConnectTimeoutError extends Error {
  readonly code = 'UPSTREAM_CONNECT_TIMEOUT';
  constructor(ms: number) {
    super(`connect to upstream took longer than ${ms} ms`);
  }
}

export function createUpstreamClient(opts: UpstreamClientOptions): UpstreamClient {
  const agentOptions = { keepAlive: true, maxSockets: opts.maxSockets, maxFreeSockets: 64 };
  const httpAgent = new http.Agent(agentOptions);
  const httpsAgent = new https.Agent(agentOptions);

  // Our own axios adapter: a plain http(s).request that resolves at the response headers with
  // the body as the raw IncomingMessage. Axios's Node adapter does far more per request (proxy
  // and redirect handling, progress and decompression streams); the profile showed it as the
  // largest share of per-request CPU (docs/BENCHMARKS.md). Axios still owns the config, the key
  // header and body serialisation. It also arms the connect time limit on fresh sockets.
  const adapter = (config: InternalAxiosRequestConfig): Promise<AxiosResponse> =>
    new Promise((resolve, reject) => {
      const url = new URL((config.baseURL ?? '') + (config.url ?? ''));
      const https_ = url.protocol === 'https:';
      const req = (https_ ? https : http).request(url, {
        method: (config.method ?? 'post').toUpperCase(),
        headers: AxiosHeaders.from(config.headers).toJSON() as http.OutgoingHttpHeaders,
        agent: https_ ? httpsAgent : httpAgent,
        signal: config.signal as AbortSignal | undefined,
      });
      req.once('socket', (socket) => {
        if (!socket.connecting) return;
        const timer = setTimeout(
          () => req.destroy(new ConnectTimeoutError(opts.connectTimeoutMs)),
          opts.connectTimeoutMs,
        );
        timer.unref();
        const clear = () => clearTimeout(timer);
        socket.once(https_ ? 'secureConnect' : 'connect', clear);
        socket.once('close', clear);
      });
      req.once('response', (res) => {
        resolve({
          data: res,
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? '',
          headers: res.headers as AxiosResponse['headers'],
          config,
          request: req,
        });
      });
      req.once('error', reject);
      req.end(config.data as string | undefined);
    });

  const instance: AxiosInstance = axios.create({
    baseURL: opts.baseUrl,
    adapter,
    responseType: 'stream',
    validateStatus: () => true,
    headers: {
      Authorization: `Bearer ${opts.apiKey}`,
      'Content-Type': 'application/json',
      Accept: 'text/event-stream, application/json',
      'Accept-Encoding': 'identity', // compression would make zlib buffer tokens
    },
  });

  return {
    async post(path, body, signal) {
      const res = await instance.post(path, body, { signal });
      return {
        status: res.status,
        headers: res.headers as Record<string, unknown>,
        body: res.data,
      };
    },
    close() {
      httpAgent.destroy();
      httpsAgent.destroy();
    },
  };
}
