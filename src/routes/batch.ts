// routes/batch.ts: POST /chat-stream/batch runs 1 to 8 prompts concurrently and interleaves
// their events in one SSE (or NDJSON) response; every event carries its prompt's `index`, each
// prompt ends with its own done or error, and a final `end` closes the batch. Batches are not
// journaled (no resume); each prompt counts against the global and the per-client stream caps,
// and a batch runs at once as many prompts as the client's cap leaves room for, the rest as those
// end. Heartbeats while no prompt sends anything (`: ping` in SSE, a ping line in NDJSON).

import { type IRouter, Router } from 'express';
import type { Config } from '../config';
import { ProxyError, withMessage } from '../errors';
import { clientGone, methodNotAllowed, onResponseClose } from '../middleware/errors';
import { Heartbeat } from '../format/response-sink';
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
  /** A heartbeat: no event, keeps reverse proxies from cutting a quiet batch. */
  ping: string;
}

// `fields` is the inside of a JSON object (without braces) that follows `"index":N`.
const SSE: BatchFormat = {
  contentType: 'text/event-stream; charset=utf-8',
  frame: (kind, index, fields) =>
    `${kind === 'content' ? '' : `event: ${kind}\n`}data: {"index":${index},${fields}}\n\n`,
  end: 'event: end\ndata: {}\n\n',
  ping: ': ping\n\n',
};

const NDJSON: BatchFormat = {
  contentType: 'application/x-ndjson; charset=utf-8',
  frame: (kind, index, fields) => `{"index":${index},"type":"${kind}",${fields}}\n`,
  end: '{"type":"end"}\n',
  ping: '{"type":"ping"}\n',
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
    if (src.messages !== undefined) {
      throw new ProxyError(
        'invalid_request',
        'a batch takes "prompts" (strings); "messages" is for POST /chat-stream',
      );
    }
    if (src.format !== undefined && src.format !== 'sse' && src.format !== 'ndjson') {
      throw new ProxyError('invalid_request', '"format" must be "sse" or "ndjson"');
    }
    const { prompts: _p, format: _f, ...shared } = src;
    const bodies = prompts.map((prompt, index) => {
      try {
        return buildUpstreamBody(
          parseChatStreamRequest({ ...shared, prompt }, false, 'text/plain', config).params,
        );
      } catch (err) {
        // Which prompt: the message says so (the options shared by all fail on the first).
        if (err instanceof ProxyError) throw withMessage(err, `prompts[${index}]: ${err.message}`);
        throw err;
      }
    });
    // As on /chat-stream, `format` wins over Accept.
    const ndjson =
      src.format === 'ndjson' ||
      (src.format === undefined && (req.headers.accept ?? '').includes('application/x-ndjson'));
    const format = ndjson ? NDJSON : SSE;
    service.admit();
    // The request holds one of the client's stream slots already (middleware/rate-limit.ts). It
    // takes one more for each other prompt it can run at once: a batch larger than what the
    // client's cap, or the server's, leaves room for runs its prompts as those end, in order.
    const want = Math.min(bodies.length, service.room()) - 1;
    const takeMoreSlots = res.locals.takeMoreSlots as ((n: number) => Promise<number>) | undefined;
    const atOnce = 1 + (takeMoreSlots ? await takeMoreSlots(want) : want);
    const keepSlots = res.locals.keepSlots as (() => void) | undefined;
    // The guards and the slots above may have waited on Redis. A client that left meanwhile
    // fired its 'close' already, so the handler below would never hear it and the prompts would
    // run (and be billed) unread; and a drain that began meanwhile found them not yet active,
    // so they would be cut at exit with no error. Check both again before starting anything.
    if (clientGone(res)) return;
    for (let i = 0; i < atOnce; i++) service.admit(i);

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
    let closed = false;
    res.on('drain', () => {
      paused = false;
      for (const s of streams) s.resume();
    });
    onResponseClose(res, () => {
      if (res.writableFinished) return;
      closed = true;
      for (const s of streams) s.abort();
    });
    // Heartbeats while no prompt sends anything: a `: ping` comment in SSE, a `{"type":"ping"}`
    // line in NDJSON (which has no comments), as on /chat-stream.
    let bytesOut = 0;
    const heartbeat = new Heartbeat(res, config.heartbeatMs, {
      ping: () => {
        bytesOut += format.ping.length;
        res.write(format.ping);
      },
    });
    const write = (text: string): boolean => {
      if (res.destroyed) return true;
      heartbeat.wrote();
      bytesOut += Buffer.byteLength(text);
      const ok = res.write(text);
      if (!ok && !paused) {
        paused = true;
        for (const s of streams) s.pause();
      }
      return ok;
    };

    // `atOnce` runners take the prompts in order; each runs one at a time.
    let next = 0;
    const runner = async (): Promise<void> => {
      while (next < bodies.length && !closed) {
        const index = next++;
        const body = bodies[index]!;
        const listener = batchListener(index, format, write);
        if (index >= atOnce) {
          keepSlots?.();
          // Waited for a slot: the server may have filled up or begun to drain meanwhile.
          try {
            service.admit();
          } catch (err) {
            if (!(err instanceof ProxyError)) throw err;
            listener.fail(err, false);
            continue;
          }
        }
        await service.run(
          body,
          listener,
          {
            requestId: `${requestId}#${index}`,
            route: '/chat-stream/batch',
            format: ndjson ? 'ndjson' : 'sse',
            model: body.model,
            status: () => res.statusCode,
            bytesOut: () => bytesOut,
          },
          (s) => {
            streams.push(s);
            if (paused) s.pause();
          },
        );
      }
    };
    await Promise.all(Array.from({ length: Math.min(atOnce, bodies.length) }, runner));
    heartbeat.stop();
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
