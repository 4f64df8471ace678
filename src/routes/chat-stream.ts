// routes/chat-stream.ts: GET and POST /chat-stream. Thin: decide between a new stream, an
// idempotent replay, an SSE resume (Last-Event-ID) and a text resume (Range / X-Resume-At);
// validate; hand new streams to the service; wire the response's drain and close.

import { hash } from 'node:crypto';
import { type IRouter, Router, type Request, type Response } from 'express';
import type { Config } from '../config';
import { ProxyError } from '../errors';
import { sseFrames, textFrames } from '../format/frames';
import { ResponseSink } from '../format/response-sink';
import { StreamRecorder, type RecorderOptions } from '../journal/recorder';
import type { JournalStore, StreamMeta } from '../journal/types';
import type { Metrics } from '../metrics';
import {
  clientGone,
  methodNotAllowed,
  onResponseClose,
  failStarted,
  releaseNext,
  watchResponse,
  type ErrorHandler,
  type ResponseWatcher,
} from '../middleware/errors';
import { isSaneRequestId } from '../middleware/request-id';
import type { ChatService, StreamMeta as RunMeta } from '../service';
import { buildUpstreamBody, type UpstreamBody } from '../upstream/request';
import type { ChatStream } from '../stream/chat-stream';
import { parseChatStreamRequest, type ChatStreamRequest } from './chat-request';

/**
 * A GET's prompt is in its URL, and a request going through the API guards' mount ends up with
 * the URL twice: Express rebuilds `req.url` when it leaves a mounted layer (the same text as
 * `originalUrl`, a new string), and the parse cached in `_parsedUrl` holds slices of the first.
 * A stream keeps its request for its whole life: with the query read (once, above), one copy is
 * enough. Up to 16 KB per open stream (Node's limit on a request head).
 */
function keepOneUrl(req: Request): void {
  if (req.url !== req.originalUrl) return; // a mount still in effect: leave it alone
  req.url = req.originalUrl;
  (req as { _parsedUrl?: unknown })._parsedUrl = undefined;
}

export function chatStreamRouter(
  config: Config,
  service: ChatService,
  journal: JournalStore,
  metrics?: Metrics,
  router: IRouter = Router(),
  /** The app's error handler, for a started stream's failure (see releaseNext). */
  onError?: ErrorHandler,
): IRouter {
  /**
   * One request, to its end (a new stream's end includes its resume grace). `headOnly` (HEAD):
   * every check a GET would make, then the head it would get, and nothing started or followed.
   */
  const handle = async (req: Request, res: Response, fromQuery: boolean, headOnly = false) => {
    const src = (fromQuery ? req.query : req.body) as Record<string, unknown>;
    if (fromQuery) keepOneUrl(req);
    const requestId = res.locals.requestId as string;
    const clientChoseId = req.headers['x-request-id'] === requestId;

    // 1. SSE resume: EventSource sends Last-Event-ID by itself when it reconnects; other clients
    // may put it in the query string, on GET and on POST alike.
    // (Express parses the query string on every read of req.query: a GET reads it once, above,
    // and a POST only when it has one.)
    const lastEventId =
      req.headers['last-event-id'] ??
      (fromQuery ? src.lastEventId : req.url.includes('?') ? req.query.lastEventId : undefined);
    if (lastEventId !== undefined) return resumeSse(res, String(lastEventId), headOnly);

    // 2. Text resume: `curl -C -` sends Range; X-Resume-At is the plain alternative.
    const offset = resumeOffset(req);
    if (offset !== undefined) {
      if (!clientChoseId)
        throw new ProxyError(
          'invalid_request',
          'a text resume needs the X-Request-ID of the stream',
        );
      const parsed = parseChatStreamRequest(src, fromQuery, 'text/plain', config);
      // The rest of this stream, and only for the request that started it.
      return replay(res, requestId, 0, parsed, offset, 206, fingerprintOf(parsed), headOnly);
    }

    const parsed = parseChatStreamRequest(src, fromQuery, req.headers.accept, config);
    const body = buildUpstreamBody(parsed.params);
    const request = JSON.stringify(body);
    const fingerprint = fingerprintOf(request);

    // 3. Idempotency: a known X-Request-ID replays that stream instead of paying for another.
    if (clientChoseId) {
      const existing = await journal.meta(requestId);
      if (existing) {
        if (existing.fingerprint !== fingerprint) {
          throw new ProxyError(
            'request_id_conflict',
            'this X-Request-ID belongs to a different request',
          );
        }
        return replay(res, requestId, 0, parsed, 0, 200, undefined, headOnly);
      }
    }
    // At its stream cap, a request that may have been a resume or a replay came this far
    // (middleware/rate-limit.ts): it is neither, so it is refused as any other.
    const refused = res.locals.streamCapRefusal as ProxyError | undefined;
    if (refused) {
      (res.locals.onStreamCapRefused as (() => void) | undefined)?.();
      throw refused;
    }
    service.admit();
    if (headOnly) return sinkFor(res, parsed, requestId).head();
    // The in-memory journal answers at once: no await, so nothing queued meanwhile (the ticks
    // of the request's own stream ending, for one) runs before the upstream request is sent.
    const claiming = journal.create(requestId, fingerprint, request);
    const claim = isThenable(claiming) ? await claiming : claiming;
    if (!claim.created) {
      // Lost a race with a concurrent request carrying the same id.
      if (claim.meta.fingerprint !== fingerprint) {
        throw new ProxyError(
          'request_id_conflict',
          'this X-Request-ID belongs to a different request',
        );
      }
      return replay(res, requestId, 0, parsed, 0, 200, undefined, false);
    }
    // The claim may have waited on Redis: a drain that began meanwhile found this stream not yet
    // active, so it would be cut at exit with no error. Ask again; a refusal forgets the claim,
    // so a retry with the same X-Request-ID starts afresh.
    try {
      service.admit();
    } catch (err) {
      journal.remove(requestId);
      throw err;
    }
    startStream(req, res, requestId, parsed, body, request, clientChoseId);
  };

  function startStream(
    req: Request,
    res: Response,
    requestId: string,
    parsed: ChatStreamRequest,
    body: ReturnType<typeof buildUpstreamBody>,
    json: string,
    clientChoseId: boolean,
  ) {
    const sink = sinkFor(res, parsed, requestId);
    const s = new NewStream(
      res,
      requestId,
      parsed,
      sink,
      clientChoseId,
      config.resumeGraceMs,
      onError,
    );
    s.recorder = new StreamRecorder(journal, requestId, s);
    s.recorder.attach(s.sink);
    const run = service.run(body, s.recorder, s, (stream) => s.started(stream), { json });
    // The client's stream slot is held until generation ends, the resume grace included, not
    // until the handler's promise settles (as soon as the stream has started).
    res.locals.slotHeldUntil = run;
    releaseNext(req);
  }

  /** SSE resume after `<requestId>:<seq>`. */
  async function resumeSse(res: Response, lastEventId: string, headOnly: boolean) {
    const colon = lastEventId.lastIndexOf(':');
    const id = lastEventId.slice(0, colon);
    const seqText = lastEventId.slice(colon + 1);
    if (colon < 1 || !isSaneRequestId(id) || !/^\d{1,9}$/.test(seqText)) {
      throw new ProxyError('invalid_request', 'Last-Event-ID must look like <requestId>:<seq>');
    }
    const seq = Number(seqText);
    const meta = await journal.meta(id);
    if (!meta || meta.overflow)
      throw new ProxyError('stream_expired', 'that stream is unknown or expired');
    if (meta.state === 'handoff' && !headOnly) await takeOver(meta);
    if ((meta.state === 'done' || meta.state === 'failed') && (await allDelivered(meta, seq))) {
      // Everything was delivered: 204 tells EventSource to stop reconnecting.
      res.setHeader('X-Request-Id', id);
      res.status(204).end();
      return;
    }
    const sink = new ResponseSink(res, sseFrames(id, config.sseRetryMs, seq), {
      requestId: id,
      heartbeatMs: config.heartbeatMs,
      afterSeq: seq,
    });
    if (headOnly) return sink.head();
    return follow(res, sink, id, seq);
  }

  /**
   * A finished stream's events up to `seq` are all it has, its end included. A stream abandoned
   * (its client left, nobody came back within the grace) has no terminal event: a client that
   * saw its last token must still be told it was cut (follow() ends it with stream_expired),
   * or the truncated answer looks complete.
   */
  async function allDelivered(meta: StreamMeta, seq: number): Promise<boolean> {
    if (seq !== meta.lastSeq) return seq > meta.lastSeq;
    // Only a 'done' stream is sure to end with its terminal event (an overflow was refused).
    if (meta.state === 'done') return true;
    const last = (await journal.read(meta.id, seq - 1)).at(-1);
    return last?.kind === 'error';
  }

  /**
   * Replay a journaled stream from the start (idempotency) or from a text byte offset. With
   * `fingerprint`, the stream must be the one that request started (409 otherwise).
   */
  async function replay(
    res: Response,
    id: string,
    afterSeq: number,
    parsed: ChatStreamRequest,
    skipBytes: number,
    status: number,
    fingerprint: string | undefined,
    headOnly: boolean,
  ) {
    const meta = await journal.meta(id);
    if (!meta || meta.overflow)
      throw new ProxyError('stream_expired', 'that stream is unknown or expired');
    if (fingerprint !== undefined && meta.fingerprint !== fingerprint) {
      throw new ProxyError(
        'request_id_conflict',
        'this X-Request-ID belongs to a different request',
      );
    }
    // A byte offset counts text (206): an SSE body skipped by it would drop or cut events.
    if (status === 206 && parsed.format !== 'text') {
      throw new ProxyError(
        'invalid_request',
        'Range and X-Resume-At resume a text stream; SSE resumes with Last-Event-ID',
      );
    }
    if (meta.state === 'handoff' && !headOnly) await takeOver(meta);
    const sink = new ResponseSink(res, framesFor(parsed, id), {
      requestId: id,
      heartbeatMs: config.heartbeatMs,
      status,
      skipBytes,
      textIncludesReasoning: parsed.includeReasoning,
    });
    if (headOnly) return sink.head();
    return follow(res, sink, id, afterSeq);
  }

  function follow(res: Response, sink: ResponseSink, id: string, afterSeq: number): Promise<void> {
    metrics?.resumes.inc({ kind: 'client' });
    return new Promise<void>((resolve) => {
      // The head waits for the first event (or, as a new stream's, a heartbeat's time): a stream
      // that fails before it opened is forgotten (its retry starts afresh), and a follower that
      // joined it early then gets a JSON error, not a 200 with an in-band error whose id would
      // belong to the next stream under that id.
      let headTimer: NodeJS.Timeout | undefined = setTimeout(() => {
        headTimer = undefined;
        sink.open();
      }, config.heartbeatMs);
      headTimer.unref();
      const opened = () => {
        if (headTimer === undefined) return;
        clearTimeout(headTimer);
        headTimer = undefined;
        sink.open(true);
      };
      let ended = false;
      const sub = journal.subscribe(id, afterSeq, {
        event(ev) {
          opened();
          sink.event(ev);
          sink.flush();
        },
        end() {
          if (ended) return;
          ended = true;
          if (sink.isClosed) {
            if (headTimer !== undefined) clearTimeout(headTimer);
            return resolve();
          }
          const before = headTimer !== undefined;
          void journal
            .meta(id)
            .then((m) => {
              if (before && !m) {
                if (headTimer !== undefined) clearTimeout(headTimer);
                headTimer = undefined;
                return sink.failBeforeOpen(
                  new ProxyError('stream_expired', 'that stream is unknown or expired'),
                );
              }
              opened();
              // Handed off by a worker that shut down: send the client back for a takeover. Live
              // again (another worker took it over between our end and this read): send it back
              // to follow that; an error event here would carry an id the takeover also uses.
              const elsewhere = m?.state === 'handoff' || (m?.state === 'live' && !m.overflow);
              return elsewhere ? sink.cut() : sink.abandon(!m);
            })
            .catch(() => {
              opened();
              sink.abandon();
            })
            .finally(resolve);
        },
      });
      const left = () => {
        if (headTimer !== undefined) clearTimeout(headTimer);
        headTimer = undefined;
        sub.close();
        if (!ended) {
          ended = true;
          resolve();
        }
      };
      onResponseClose(res, left);
      if (clientGone(res)) left();
    });
  }

  /**
   * Continue a stream whose worker shut down mid-answer: exactly one resume request claims it
   * and continues the answer through prefix completion, appending to the same journal; every
   * resume then follows the journal as usual.
   */
  async function takeOver(meta: StreamMeta): Promise<void> {
    if (service.draining || !meta.request) return;
    // A continuation is a stream like any other: the global cap applies (503 overloaded; the
    // client comes back, and the stream waits in the journal).
    service.admit();
    const events = await journal.read(meta.id, 0);
    if (!(await journal.claim(meta.id))) return;
    // As for a new stream: a drain may have begun while Redis answered. The stream goes back to
    // the journal for another worker.
    try {
      service.admit();
    } catch (err) {
      journal.handoff(meta.id);
      throw err;
    }
    // The answer so far is the prefix; max_tokens counts the reasoning before it too.
    let prefix = '';
    let prefixTokens = 0;
    let prefixAnswerTokens = 0;
    for (const ev of events) {
      if (ev.kind === 'reasoning') prefixTokens++;
      if (ev.kind !== 'content') continue;
      prefix += ev.data;
      prefixTokens++;
      prefixAnswerTokens++;
    }
    const body = JSON.parse(meta.request) as UpstreamBody;
    let stream: ChatStream | undefined;
    const recorder = new StreamRecorder(journal, meta.id, {
      graceMs: config.resumeGraceMs,
      startSeq: events.at(-1)?.seq ?? meta.lastSeq,
      abort: () => stream?.abort(),
    });
    metrics?.resumes.inc({ kind: 'takeover' });
    void service.run(
      body,
      recorder,
      {
        requestId: meta.id,
        route: '/chat-stream',
        format: 'takeover',
        model: body.model,
        handoff: () => {
          if (!recorder.handoff()) return false;
          stream?.abort('handed_off');
          return true;
        },
        ended: () => recorder.abandoned(),
        // Nobody to answer: the journal entry ends and the bug is logged (no rejection).
        failed: (err: unknown) => {
          recorder.abandoned();
          service.reportBug(meta.id, err);
        },
      },
      (s) => {
        stream = s;
      },
      { prefix, prefixTokens, prefixAnswerTokens },
    );
    // Nobody is attached directly: resumed clients follow the journal, and count as followers.
    if (config.resumeGraceMs > 0) recorder.detach();
  }

  function sinkFor(res: Response, parsed: ChatStreamRequest, id: string): ResponseSink {
    return new ResponseSink(res, framesFor(parsed, id), {
      requestId: id,
      heartbeatMs: config.heartbeatMs,
    });
  }

  function framesFor(parsed: ChatStreamRequest, id: string) {
    return parsed.format === 'sse'
      ? sseFrames(id, config.sseRetryMs)
      : textFrames(parsed.includeReasoning);
  }

  // The client's stream slot (middleware/rate-limit.ts) is held until the request is done with.
  // For a new stream, until generation ends, the resume grace included, even if the client hung
  // up while the journal claim was awaited: startStream puts the generation in this promise's
  // place when the stream starts, and the rate limiter waits on whichever is there.
  const held = (res: Response, work: Promise<void>) => {
    res.locals.slotHeldUntil ??= work;
    return work;
  };
  // HEAD: what a GET would answer, status included, without starting or following a stream
  // (Express would otherwise answer HEAD with the GET route, upstream included).
  router.head('/chat-stream', (req, res) => handle(req, res, true, true));
  // The handler's promise settles when a new stream has started (or a replay or resume ended).
  router.get('/chat-stream', (req, res, next) => {
    held(res, handle(req, res, true)).then(undefined, next);
  });
  router.post('/chat-stream', (req, res, next) => {
    if (!req.is('application/json') && !req.is('+json')) {
      throw new ProxyError('unsupported_media_type', 'POST /chat-stream takes application/json');
    }
    if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body)) {
      throw new ProxyError('invalid_request', 'the body must be a JSON object');
    }
    held(res, handle(req, res, false)).then(undefined, next);
  });
  router.all('/chat-stream', methodNotAllowed(['GET', 'HEAD', 'POST']));
  return router;
}

/**
 * A new stream's wiring between its response, its recorder and the engine: the recorder's
 * options, the service's log fields and handoff, the response's drain and close. Kept for each
 * open stream: one object with methods, not a dozen closures, their contexts and two objects.
 */
class NewStream implements RecorderOptions, RunMeta, ResponseWatcher {
  readonly route = '/chat-stream';
  readonly format: string;
  readonly model: string;
  /** Made with this object as its options (see startStream). */
  recorder!: StreamRecorder;
  private stream: ChatStream | undefined = undefined;

  constructor(
    private readonly res: Response,
    readonly requestId: string,
    parsed: ChatStreamRequest,
    readonly sink: ResponseSink,
    /** The client chose the id (X-Request-ID): it can come back even without our head. */
    private readonly clientChoseId: boolean,
    readonly graceMs: number,
    /** The app's error handler, for failed(). */
    private readonly onError: ErrorHandler | undefined,
  ) {
    this.format = parsed.format;
    this.model = parsed.params.model;
  }

  /** The recorder's: nobody is reading and nobody came back. */
  abort(): void {
    this.stream?.abort();
  }

  bytesOut(): number {
    return this.sink.bytesOut;
  }

  status(): number {
    return this.sink.status;
  }

  peakBuffered(): number {
    return this.sink.peakBuffered;
  }

  handoff(): boolean {
    // A client still waiting for the head would get an empty 200 from cut(), which no client
    // takes for a stream to come back for (EventSource gives up on it): it gets the JSON 503
    // shutting_down instead (the drain stops the stream).
    if (!this.res.destroyed && !this.sink.headSent) return false;
    if (!this.recorder.handoff()) return false;
    this.stream?.abort('handed_off');
    this.sink.cut();
    return true;
  }

  /** The service's: generation ended (the resume grace included). */
  ended(): void {
    this.recorder.abandoned();
  }

  /** The service's: the stream failed by a bug. */
  failed(err: unknown): void {
    failStarted(this.res, err, this.onError);
  }

  /** The engine's stream exists: the response's drain and close reach it. */
  started(stream: ChatStream): void {
    this.stream = stream;
    watchResponse(this.res, this);
    // It may have left already, while the journal claim was awaited.
    if (clientGone(this.res)) this.left();
  }

  /** The response's: the client's buffer drained. */
  drained(): void {
    this.stream?.resume();
  }

  /**
   * The client left before the end: generation goes on into the journal for the grace period,
   * then stops unless someone resumed.
   */
  left(): void {
    this.stream?.resume();
    // A client that never saw this stream's id (its own X-Request-ID, or the head that carries
    // ours) can never come back for it: stop now, not after the grace. A response pipelined
    // behind another never had a socket: its head never left Node's buffer.
    this.recorder.detach(this.clientChoseId || (this.sink.headSent && this.res.socket !== null));
  }
}

/**
 * A promise, from any realm or library (not only `instanceof Promise`): a store passed in through
 * createApp's options may hand back any thenable.
 */
function isThenable<T>(x: T | PromiseLike<T>): x is PromiseLike<T> {
  return typeof (x as { then?: unknown }).then === 'function';
}

/** What identifies a request's upstream body: X-Request-ID reuse must bring the same one. */
function fingerprintOf(request: string | ChatStreamRequest): string {
  const json =
    typeof request === 'string' ? request : JSON.stringify(buildUpstreamBody(request.params));
  // One-shot hash: no Hash object per request (createHash was 2-3% of a short stream's CPU).
  return hash('sha256', json, 'base64url');
}

/** Byte offset of a text resume from `Range: bytes=N-` or `X-Resume-At: N`, if asked. */
function resumeOffset(req: Request): number | undefined {
  const range = req.headers.range;
  if (typeof range === 'string') {
    const m = /^bytes=(\d{1,15})-$/.exec(range.trim());
    if (!m) throw new ProxyError('invalid_request', 'only "Range: bytes=N-" is supported');
    return Number(m[1]);
  }
  const at = req.headers['x-resume-at'];
  if (typeof at === 'string') {
    if (!/^\d{1,15}$/.test(at.trim()))
      throw new ProxyError('invalid_request', 'X-Resume-At must be a byte offset');
    return Number(at.trim());
  }
  return undefined;
}
