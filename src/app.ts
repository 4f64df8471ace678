// app.ts: createApp(config) builds the Express app: middleware order, routes, error handler.
// It never listens (server.ts does), so tests can use supertest(app) or listen(0).

import express, { type Express, type Request, type RequestHandler, type Response } from 'express';
import helmet from 'helmet';
import Redis from 'ioredis';
import type { Config } from './config';
import { ProxyError } from './errors';
import { MemoryJournalStore } from './journal/memory-store';
import { RedisJournalStore } from './journal/redis-store';
import type { JournalStore } from './journal/types';
import { bindRequestClasses, type RequestClasses } from './http-server';
import { createLogger, type Logger } from './log';
import { Metrics } from './metrics';
import { apiKeyAuth, memoryReplayGuard, redisReplayGuard, signatureAuth } from './middleware/auth';
import { cors } from './middleware/cors';
import { errorHandler, methodNotAllowed, notFound, onResponseClose } from './middleware/errors';
import { memorySlots, redisSlots, requestRateLimit, streamCap } from './middleware/rate-limit';
import { requestId } from './middleware/request-id';
import { series } from './middleware/series';
import { batchRouter } from './routes/batch';
import { chatStreamRouter } from './routes/chat-stream';
import { demoRouter } from './routes/demo';
import { healthRouter } from './routes/health';
import { openAiRouter } from './routes/openai';
import { ChatService } from './service';
import { createUpstreamClient, type UpstreamClient } from './upstream/client';

export interface AppOptions {
  logger?: Logger;
  /** Replace the upstream client (tests, embedding). */
  client?: UpstreamClient;
  /** Replace the resume journal (tests, embedding). */
  journal?: JournalStore;
}

export interface ProxyApp extends Express {
  service: ChatService;
  journal: JournalStore;
  metrics: Metrics;
  logger: Logger;
  /** For http.createServer's options: see http-server.ts (createHttpServer uses them). */
  requestClasses: RequestClasses;
  /**
   * Release sockets, timers and Redis connections. Active streams are stopped. Resolves when the
   * journal has written what it had queued (a handed-off stream's state, in Redis).
   */
  close(): Promise<void>;
  /**
   * Shutdown: resolves when every request in flight has answered (at least its head), or at
   * `deadline` (ms since the epoch). A draining app answers new streams 503, so this lets the
   * requests that were waiting (on Redis in a guard, on the journal claim) say so before their
   * connections are closed.
   */
  requestsAnswered(deadline: number): Promise<void>;
}

/**
 * helmet's options for API responses (event streams, text, JSON), after the OWASP REST Security
 * Cheat Sheet: the headers that only concern HTML documents (COOP, Origin-Agent-Cluster,
 * X-DNS-Prefetch-Control, X-Download-Options, X-Permitted-Cross-Domain-Policies, X-XSS-Protection)
 * are left to the demo page, and the CSP forbids everything a document could load or embed.
 */
export const API_SECURITY_HEADERS: Parameters<typeof helmet>[0] = {
  contentSecurityPolicy: {
    useDefaults: false,
    directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
  },
  crossOriginOpenerPolicy: false,
  originAgentCluster: false,
  xDnsPrefetchControl: false,
  xDownloadOptions: false,
  xPermittedCrossDomainPolicies: false,
  xXssProtection: false,
};

/** The API surface: everything that costs upstream tokens. */
const API_PATHS = ['/chat-stream', '/v1'];

export function createApp(config: Config, options: AppOptions = {}): ProxyApp {
  const logger = options.logger ?? createLogger(config.logLevel);
  const client =
    options.client ??
    createUpstreamClient({
      baseUrl: config.deepseekBaseUrl,
      // The simulator takes any key; a real deployment always has one (config enforces it).
      apiKey: config.deepseekApiKey ?? 'sk-simulator',
      maxSockets: config.upstreamMaxSockets,
      connectTimeoutMs: config.connectTimeoutMs,
    });
  const metrics = new Metrics();
  const service = new ChatService(config, client, logger, metrics);
  const redisError = (err: unknown) =>
    logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'redis error');
  const journal = options.journal ?? createJournal(config, redisError);
  const redis = config.redisUrl
    ? new Redis(config.redisUrl, { maxRetriesPerRequest: 2 })
    : undefined;
  redis?.on('error', redisError);

  const app = express() as unknown as ProxyApp;
  app.requestClasses = bindRequestClasses(app);
  const inFlight = new Set<Response>();
  app.disable('x-powered-by');
  app.set('trust proxy', config.trustProxy);
  app.set('query parser', 'simple');
  const json = express.json({
    limit: config.maxBodyBytes,
    type: ['application/json', 'application/*+json'],
    // The signature covers the raw body, byte for byte: kept for it (and only when requests are
    // signed; the check lets it go).
    verify: config.signingSecret
      ? (req, _res, buf) => {
          (req as unknown as { rawBody: Buffer }).rawBody = buf;
        }
      : undefined,
  });
  // What every request passes through, as one router layer (middleware/series.ts).
  // Every response gets the headers that matter to an API (nosniff, HSTS, no framing, no
  // referrer, same-origin CORP, a CSP that allows nothing); the demo page adds helmet's full
  // set for documents (routes/demo.ts). Six headers fewer on every stream: header work was 5% of
  // the proxy's CPU per stream (docs/BENCHMARKS.md).
  app.use(
    series([
      helmet(API_SECURITY_HEADERS),
      requestId,
      countRequests(metrics, inFlight),
      ...(config.corsOrigins.length > 0 ? [cors(config.corsOrigins)] : []),
      // GET and HEAD take no body here (GET /chat-stream reads its query): they skip the parser.
      (req, res, next) => {
        if (req.method === 'GET' || req.method === 'HEAD') {
          // A body on a GET is ignored; read it away, or the request never completes and
          // REQUEST_TIMEOUT_MS would cut the stream answering it.
          if (!req.complete) req.resume();
          next();
        } else json(req, res, next);
      },
    ]),
  );

  // Guards for the API, in order: who is it, is it signed, how fast, how many at once.
  const guards: RequestHandler[] = [];
  if (config.proxyApiKeys.length > 0) guards.push(apiKeyAuth(config.proxyApiKeys));
  if (config.signingSecret) {
    guards.push(
      signatureAuth(config.signingSecret, redis ? redisReplayGuard(redis) : memoryReplayGuard()),
    );
  }
  if (config.rateLimitMax > 0) {
    guards.push(
      requestRateLimit({
        windowMs: config.rateLimitWindowMs,
        limit: config.rateLimitMax,
        redis,
        onLimited: () => metrics.rateLimited.inc({ limit: 'requests' }),
      }),
    );
  }
  const slotTtlMs = config.streamMaxDurationMs + config.resumeGraceMs + 60_000;
  guards.push(
    streamCap(
      redis ? redisSlots(redis, slotTtlMs) : memorySlots(),
      config.maxStreamsPerClient,
      () => metrics.rateLimited.inc({ limit: 'streams' }),
    ),
  );
  app.use(API_PATHS, series(guards));

  // The streaming routes first, straight on the app's router: Express tries every layer in
  // turn, and entering a router of their own cost each request microseconds on the path to the
  // first token (docs/BENCHMARKS.md).
  const onError = errorHandler(logger);
  chatStreamRouter(config, service, journal, metrics, app, onError);
  openAiRouter(config, service, app, onError);
  batchRouter(config, service, app);
  app.use(healthRouter(service, journal));
  if (config.metricsPort === undefined) {
    app.get('/metrics', metricsHandler(metrics));
    app.all('/metrics', methodNotAllowed(['GET', 'HEAD']));
  }
  // Static files last: API requests never pay for a filesystem lookup.
  app.use(demoRouter());
  app.use(notFound);
  app.use(onError);

  app.service = service;
  app.journal = journal;
  app.metrics = metrics;
  app.logger = logger;
  app.close = () => {
    service.draining = true;
    // Streams still running (an embedder closing the app) end with the SPEC's in-band error.
    const closing = new ProxyError('shutting_down', 'the server is shutting down');
    for (const s of [...service.active]) s.stop(closing);
    client.close();
    redis?.disconnect();
    return journal.shutdown();
  };
  app.requestsAnswered = async (deadline) => {
    for (;;) {
      let waiting = false;
      for (const r of inFlight) {
        // Only requests read whole (waiting on Redis, or on the journal): one whose body is still
        // arriving (a stalled upload) would hold the shutdown for the whole grace.
        if (!r.headersSent && r.req.complete) {
          waiting = true;
          break;
        }
      }
      if (!waiting || Date.now() >= deadline) return;
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  return app;
}

/** GET /metrics in the Prometheus text format. */
export function metricsHandler(metrics: Metrics) {
  return async (_req: Request, res: Response): Promise<void> => {
    res.setHeader('Content-Type', metrics.registry.contentType);
    res.end(await metrics.registry.metrics());
  };
}

/**
 * Requests by route template (bounded label values) and status, counted when they end; and the
 * requests in flight, for the shutdown (requestsAnswered).
 */
function countRequests(metrics: Metrics, inFlight: Set<Response>): RequestHandler {
  // One listener for every response (it is called with the response as `this`), not a closure
  // over each request kept for its length.
  function ended(this: Response): void {
    inFlight.delete(this);
    const req = this.req;
    const route = req.route ? `${req.baseUrl}${String(req.route.path)}` : 'other';
    metrics.requests.inc({ route, method: req.method, status: String(this.statusCode) });
  }
  return (_req, res, next) => {
    inFlight.add(res);
    onResponseClose(res, ended);
    next();
  };
}

function createJournal(config: Config, onError: (err: unknown) => void): JournalStore {
  const limits = {
    ttlMs: config.resumeTtlS * 1000,
    // A stream runs at most STREAM_MAX_DURATION_MS (its grace included): its keys must not
    // expire before, however short RESUME_TTL_S is.
    liveTtlMs: config.streamMaxDurationMs + config.resumeGraceMs + 60_000,
    maxBytesPerStream: config.journalMaxBytesPerStream,
    maxBytesTotal: config.journalMaxBytes,
  };
  if (!config.redisUrl) return new MemoryJournalStore(limits);
  return new RedisJournalStore(config.redisUrl, limits, 'dsp:', onError);
}
