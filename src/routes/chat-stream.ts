// routes/chat-stream.ts: GET and POST /chat-stream. Thin: validate, pick the format, hand the
// stream to the service, and wire the response's drain and close back to it.

import { Router, type Request, type Response } from 'express';
import type { Config } from '../config';
import { ProxyError } from '../errors';
import { sseFrames, textFrames } from '../format/frames';
import { ResponseSink } from '../format/response-sink';
import type { ChatService } from '../service';
import { buildUpstreamBody } from '../upstream/request';
import { parseChatStreamRequest } from './chat-request';
import { methodNotAllowed } from '../middleware/errors';

export function chatStreamRouter(config: Config, service: ChatService): Router {
  const router = Router();

  const handle = async (req: Request, res: Response, fromQuery: boolean) => {
    const src = (fromQuery ? req.query : req.body) as Record<string, unknown>;
    const parsed = parseChatStreamRequest(src, fromQuery, req.headers.accept, config);
    service.admit();
    const requestId = res.locals.requestId as string;
    const frames =
      parsed.format === 'sse'
        ? sseFrames(requestId, config.sseRetryMs)
        : textFrames(parsed.includeReasoning);
    const sink = new ResponseSink(res, frames, { requestId, heartbeatMs: config.heartbeatMs });
    const body = buildUpstreamBody(parsed.params);
    await service.run(
      body,
      sink,
      {
        requestId,
        route: '/chat-stream',
        format: parsed.format,
        model: parsed.params.model,
        bytesOut: () => sink.bytesOut,
        status: () => sink.status,
        peakBuffered: () => sink.peakBuffered,
      },
      (stream) => {
        res.on('drain', () => stream.resume());
        // The client left before the end: stop the upstream so nobody pays for unread tokens.
        res.on('close', () => {
          if (!res.writableFinished) stream.abort();
        });
      },
    );
  };

  router.get('/chat-stream', (req, res) => handle(req, res, true));
  router.post('/chat-stream', (req, res) => {
    if (!req.is('application/json') && !req.is('+json')) {
      throw new ProxyError('unsupported_media_type', 'POST /chat-stream takes application/json');
    }
    if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body)) {
      throw new ProxyError('invalid_request', 'the body must be a JSON object');
    }
    return handle(req, res, false);
  });
  router.all('/chat-stream', methodNotAllowed(['GET', 'POST']));
  return router;
}
