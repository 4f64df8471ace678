// routes/batch.ts: POST /chat-stream/batch runs 1 to 8 prompts concurrently and interleaves
// their events in one SSE (or NDJSON) response; every event carries its prompt's `index`, each
// prompt ends with its own done or error, and a final `end` closes the batch. Batches are not
// journaled (no resume); each prompt counts against the global and the per-client stream caps.
// SSE batches get `: ping` heartbeats while no prompt sends anything.

import { type IRouter, Router } from 'express';
import type { Config } from '../config';
import { ProxyError } from '../errors';
import { clientGone, methodNotAllowed } from '../middleware/errors';
import { heartbeatTickMs } from '../format/response-sink';
import type { ChatService } from '../service';
import type { ChatStream, StreamListener } from '../stream/chat-stream';
import type { Usage } from '../stream/interpreter';
import { buildUpstreamBody } from '../upstream/request';
import { parseChatStreamRequest } from './chat-request';

const MAX_PROMPTS = 8;

type Kind = 'content' | 'reasoning' | 'done' | 'error';

interface BatchFormat {
  contentType: string;
  frame(kind: Kind, index: number, fields: string): string;
  end: string;
}

// `fields` is the inside of a JSON object (without braces) that follows `"index":N`.
const SSE: BatchFormat = {
  contentType: 'text/event-stream; charset=utf-8',
  frame: (kind, index, fields) =>
    `${kind === 'content' ? '' : `event: ${kind}\n`}data: {"index":${index},${fields}}\n\n`,
  end: 'event: end\ndata: {}\n\n',
};

const NDJSON: BatchFormat = {
  contentType: 'application/x-ndjson; charset=utf-8',
  frame: (kind, index, fields) => `{"index":${index},"type":"${kind}",${fields}}\n`,
  end: '{"type":"end"}\n',
};

export function batchRouter(
  config: Config,
  service: ChatService,
  router: IRouter = Router(),
): IRouter {
  router.post('/chat-stream/batch', async (req, res) => {
    if (!req.is('application/json') && !req.is('+json')) {
      throw new ProxyError(
        'unsupported_media_type',
        'POST /chat-stream/batch takes application/json',
      );
    }
    const src = req.body as Record<string, unknown> | undefined;
    if (typeof src !== 'object' || src === null || Array.isArray(src)) {
      throw new ProxyError('invalid_request', 'the body must be a JSON object');
    }
    const prompts = src.prompts;
    if (!Array.isArray(prompts) || prompts.length < 1 || prompts.length > MAX_PROMPTS) {
      throw new ProxyError(
        'invalid_request',
        `"prompts" must be an array of 1 to ${MAX_PROMPTS} prompts`,
      );
    }
    const { prompts: _p, messages: _m, format: _f, ...shared } = src;
    const bodies = prompts.map((prompt) =>
      buildUpstreamBody(
        parseChatStreamRequest({ ...shared, prompt }, false, 'text/plain', config).params,
      ),
    );
    const ndjson =
      src.format === 'ndjson' || (req.headers.accept ?? '').includes('application/x-ndjson');
    const format = ndjson ? NDJSON : SSE;
    for (let i = 0; i < bodies.length; i++) service.admit(i);
    // The request holds one of the client's stream slots already (middleware/rate-limit.ts).
    const takeMoreSlots = res.locals.takeMoreSlots as ((n: number) => Promise<void>) | undefined;
    await takeMoreSlots?.(bodies.length - 1);
    // The guards and the slots above may have waited on Redis. A client that left meanwhile
    // fired its 'close' already, so the handler below would never hear it and the prompts would
    // run (and be billed) unread; and a drain that began meanwhile found them not yet active,
    // so they would be cut at exit with no error. Check both again before starting anything.
    if (clientGone(res)) return;
    for (let i = 0; i < bodies.length; i++) service.admit(i);

    const requestId = res.locals.requestId as string;
    res.writeHead(200, {
      'Content-Type': format.contentType,
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
      'X-Request-Id': requestId,
    });
    res.flushHeaders();

    const streams: ChatStream[] = [];
    let paused = false;
    res.on('drain', () => {
      paused = false;
      for (const s of streams) s.resume();
    });
    res.on('close', () => {
      if (!res.writableFinished) for (const s of streams) s.abort();
    });
    // Heartbeats (SSE only: NDJSON has no comment line), as on /chat-stream.
    let wrote = false;
    const heartbeat = ndjson
      ? undefined
      : setInterval(() => {
          // As ResponseSink: a ping counts as a write (one per HEARTBEAT_MS of silence).
          if (!wrote && !res.destroyed) {
            res.write(': ping\n\n');
            wrote = true;
          } else wrote = false;
        }, heartbeatTickMs(config.heartbeatMs));
    heartbeat?.unref();
    res.on('close', () => clearInterval(heartbeat));
    const write = (text: string): boolean => {
      if (res.destroyed) return true;
      wrote = true;
      const ok = res.write(text);
      if (!ok && !paused) {
        paused = true;
        for (const s of streams) s.pause();
      }
      return ok;
    };

    await Promise.all(
      bodies.map((body, index) =>
        service.run(
          body,
          batchListener(index, format, write),
          {
            requestId: `${requestId}#${index}`,
            route: '/chat-stream/batch',
            format: ndjson ? 'ndjson' : 'sse',
            model: body.model,
          },
          (s) => streams.push(s),
        ),
      ),
    );
    clearInterval(heartbeat);
    if (!res.destroyed) res.end(format.end);
  });
  router.all('/chat-stream/batch', methodNotAllowed(['POST']));
  return router;
}

function batchListener(
  index: number,
  format: BatchFormat,
  write: (s: string) => boolean,
): StreamListener {
  let pending = '';
  return {
    open() {},
    content(text) {
      pending += format.frame('content', index, `"content":${JSON.stringify(text)}`);
    },
    reasoning(text) {
      pending += format.frame('reasoning', index, `"content":${JSON.stringify(text)}`);
    },
    flush() {
      if (pending === '') return true;
      const out = pending;
      pending = '';
      return write(out);
    },
    end(finishReason: string, usage: Usage | undefined) {
      pending += format.frame(
        'done',
        index,
        `"finish_reason":${JSON.stringify(finishReason)},"usage":${JSON.stringify(usage ?? null)}`,
      );
      this.flush();
    },
    fail(err: ProxyError) {
      pending += format.frame(
        'error',
        index,
        `"code":${JSON.stringify(err.code)},"message":${JSON.stringify(err.message)}`,
      );
      this.flush();
    },
  };
}
