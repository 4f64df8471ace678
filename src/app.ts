// app.ts: createApp(config) builds the Express app: middleware order, routes, error handler.
// It never listens (server.ts does), so tests can use supertest(app) or listen(0).

import express, { type Express } from 'express';
import helmet from 'helmet';
import type { Config } from './config';
import { createLogger, type Logger } from './log';
import { errorHandler, notFound } from './middleware/errors';
import { requestId } from './middleware/request-id';
import { chatStreamRouter } from './routes/chat-stream';
import { demoRouter } from './routes/demo';
import { healthRouter } from './routes/health';
import { ChatService } from './service';
import { createUpstreamClient, type UpstreamClient } from './upstream/client';

export interface AppOptions {
  logger?: Logger;
  /** Replace the upstream client (tests, embedding). */
  client?: UpstreamClient;
}

export interface ProxyApp extends Express {
  service: ChatService;
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

  const app = express() as unknown as ProxyApp;
  app.disable('x-powered-by');
  app.set('trust proxy', config.trustProxy);
  app.set('query parser', 'simple');
  app.use(helmet());
  app.use(requestId);
  app.use(
    express.json({ limit: config.maxBodyBytes, type: ['application/json', 'application/*+json'] }),
  );

  app.use(healthRouter(service));
  app.use(chatStreamRouter(config, service));
  app.use(demoRouter());
  app.use(notFound);
  app.use(errorHandler(logger));

  app.service = service;
  app.logger = logger;
  app.close = () => {
    service.draining = true;
    for (const s of [...service.active]) s.abort();
    client.close();
  };
  return app;
}
