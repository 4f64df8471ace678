// upstream/client.ts: the one axios instance that talks to DeepSeek: keep-alive agents with a
// bounded pool, the bearer key (set here and nowhere else), a connect time limit, and one abort
// signal per request. Resolves when response headers arrive; the body stays a stream.

import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import axios, { type AxiosInstance } from 'axios';

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

  // A transport that arms a connect timer on fresh sockets; pooled sockets skip it.
  const transport = {
    request(options: http.RequestOptions, cb: (res: http.IncomingMessage) => void) {
      const mod = options.protocol === 'https:' ? https : http;
      const req = mod.request(options, cb);
      req.once('socket', (socket) => {
        if (!socket.connecting) return;
        const timer = setTimeout(
          () => req.destroy(new ConnectTimeoutError(opts.connectTimeoutMs)),
          opts.connectTimeoutMs,
        );
        timer.unref();
        const clear = () => clearTimeout(timer);
        socket.once(options.protocol === 'https:' ? 'secureConnect' : 'connect', clear);
        socket.once('close', clear);
      });
      return req;
    },
  };

  const instance: AxiosInstance = axios.create({
    baseURL: opts.baseUrl,
    httpAgent,
    httpsAgent,
    transport,
    proxy: false, // an HTTP(S)_PROXY in the environment must not reroute (or buffer) the stream
    maxRedirects: 0,
    decompress: false,
    responseType: 'stream',
    validateStatus: () => true,
    maxBodyLength: Infinity,
    maxContentLength: Infinity,
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
