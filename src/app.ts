// app.ts: createApp(config) builds the Express app: middleware order, routes, error handler.
// It never listens (server.ts does), so tests can use supertest(app) or listen(0).

import express, { type Express } from 'express';
import helmet from 'helmet';
import type { Config } from './config';
import { createLogger, type Logger } from './log';
import { errorHandler, notFound } from './middleware/errors';
import { requestId } from './middleware/request-id';
import { batchRouter } from './routes/batch';
import { chatStreamRouter } from './routes/chat-stream';
import { demoRouter } from './routes/demo';
import { healthRouter } from './routes/health';
import { openAiRouter } from './routes/openai';
import { ChatService } from './service';
import { createUpstreamClient, type UpstreamClient } from './upstream/client';
import { MemoryJournalStore } from './journal/memory-store';
import { RedisJournalStore } from './journal/redis-store';
import type { JournalStore } from './journal/types';

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
  logger: Logger;
  /** Release sockets and timers (tests, embedding). Active streams are stopped. */
  close(): void;
}

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
  const service = new ChatService(config, client, logger);
  const journal = options.journal ?? createJournal(config, logger);

  const app = express() as unknown as ProxyApp;
  app.disable('x-powered-by');
  app.set('trust proxy', config.trustProxy);
  app.set('query parser', 'simple');
  app.use(helmet());
  app.use(requestId);
  app.use(
    express.json({ limit: config.maxBodyBytes, type: ['application/json', 'application/*+json'] }),
  );

  app.use(healthRouter(service, journal));
  app.use(openAiRouter(config, service));
  app.use(batchRouter(config, service));
  app.use(chatStreamRouter(config, service, journal));
  app.use(demoRouter());
  app.use(notFound);
  app.use(errorHandler(logger));

  app.service = service;
  app.journal = journal;
  app.logger = logger;
  app.close = () => {
    service.draining = true;
    for (const s of [...service.active]) s.abort();
    client.close();
    void journal.shutdown();
  };
  return app;
}

function createJournal(config: Config, logger: Logger): JournalStore {
  const limits = {
    ttlMs: config.resumeTtlS * 1000,
    maxBytesPerStream: config.journalMaxBytesPerStream,
    maxBytesTotal: config.journalMaxBytes,
  };
  if (!config.redisUrl) return new MemoryJournalStore(limits);
  return new RedisJournalStore(config.redisUrl, limits, 'dsp:', (err) =>
    logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'redis journal error'),
  );
}
