// routes/openai.ts: the OpenAI-compatible surface. POST /v1/chat/completions takes the body as
// DeepSeek does (model limited to the allowlist, aliases resolved, the server's key injected) and
// streams the upstream's chunk objects through untouched, ending with `data: [DONE]`; with
// `stream: false` it answers one JSON completion, assembled from the same upstream stream so
// retries, time limits and resume apply alike. GET /v1/models lists the allowlist.

import type { ServerResponse } from 'node:http';
import { releaseHead } from '../flat';
import { Heartbeat } from '../format/response-sink';
import { type IRouter, Router, type Request, type Response } from 'express';
import type { Config } from '../config';
import { ProxyError, openAiErrorBody } from '../errors';
import {
  clientGone,
  methodNotAllowed,
  failStarted,
  releaseNext,
  watchResponse,
  type ErrorHandler,
  type ResponseWatcher,
} from '../middleware/errors';
import type { ChatService, StreamMeta } from '../service';
import type { ChatStream, StreamListener } from '../stream/chat-stream';
import type { Usage } from '../stream/interpreter';
import { resolveModel } from '../upstream/deepseek';
import type { UpstreamBody } from '../upstream/request';
import { writeChunk } from '../format/chunk';

export function openAiRouter(
  config: Config,
  service: ChatService,
  router: IRouter = Router(),
  /** The app's error handler, for a started stream's failure (see releaseNext). */
  onError?: ErrorHandler,
): IRouter {
  router.get('/v1/models', (_req, res) => {
    res.json({
      object: 'list',
      data: config.allowedModels.map((id) => ({
        id,
        object: 'model',
        created: 0,
        owned_by: 'deepseek',
      })),
    });
  });
  router.all('/v1/models', methodNotAllowed(['GET']));

  router.post('/v1/chat/completions', (req: Request, res: Response) => {
    if (!req.is('application/json') && !req.is('+json')) {
      throw new ProxyError(
        'unsupported_media_type',
        'POST /v1/chat/completions takes application/json',
      );
    }
    const body = shapeBody(req.body, config);
    // The guards may have waited on Redis (rate limit, replay guard). A client that left
    // meanwhile fired its 'close' already: the handler below would never hear it, and the answer
    // would be generated (and billed) for nobody, its stream paused on a dead socket until the
    // total time limit.
    if (clientGone(res)) return;
    service.admit();
    const requestId = res.locals.requestId as string;
    const stream = body.stream === true;
    const listener = stream
      ? new OpenAiStreamSink(res, requestId, config.heartbeatMs)
      : new OpenAiAggregateSink(res, requestId);
    body.stream = true; // non-stream answers are assembled from the stream
    const meta = new V1Meta(
      requestId,
      stream ? 'openai-sse' : 'openai-json',
      String(req.body.model ?? config.defaultModel),
      listener,
      res,
      onError,
    );
    void service.run(body, listener, meta, (s) => meta.started(s));
    // Not returned to Express: a promise pending for the stream's length kept its `next`. It
    // never rejects: a failure goes to V1Meta.failed.
    releaseNext(req);
  });
  router.all('/v1/chat/completions', methodNotAllowed(['POST']));
  return router;
}

/**
 * A /v1 stream's log fields and its hold on the response: an object with methods, not closures
 * kept for the stream's life.
 */
class V1Meta implements StreamMeta, ResponseWatcher {
  readonly route = '/v1/chat/completions';
  private stream: ChatStream | undefined = undefined;
  constructor(
    readonly requestId: string,
    readonly format: string,
    readonly model: string,
    private readonly listener: { bytesOut: number; status: number },
    private readonly res: Response,
    private readonly onError: ErrorHandler | undefined,
  ) {}

  /** The engine's stream exists: the response's drain and close reach it. */
  started(stream: ChatStream): void {
    this.stream = stream;
    watchResponse(this.res, this);
  }

  drained(): void {
    this.stream?.resume();
  }

  /** The client left: nothing is journaled for /v1, so the upstream stops now. */
  left(): void {
    this.stream?.abort();
  }

  failed(err: unknown): void {
    failStarted(this.res, err, this.onError);
  }

  bytesOut(): number {
    return this.listener.bytesOut;
  }

  status(): number {
    return this.listener.status;
  }
}

/** Validate just enough, resolve the model, keep every other field the client sent. */
function shapeBody(raw: unknown, config: Config): UpstreamBody {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ProxyError('invalid_request', 'the body must be a JSON object');
  }
  const src = raw as Record<string, unknown>;
  const messages = src.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new ProxyError('invalid_request', '"messages" must be a non-empty array');
  }
  let chars = 0;
  for (const m of messages as unknown[]) {
    if (typeof m !== 'object' || m === null || typeof (m as { role?: unknown }).role !== 'string') {
      throw new ProxyError('invalid_request', 'each message must be an object with a "role"');
    }
    chars += messageChars(m as Record<string, unknown>);
  }
  // Tool definitions are input the model reads as well.
  if (Array.isArray(src.tools)) chars += JSON.stringify(src.tools).length;
  if (chars > config.maxPromptChars) {
    throw new ProxyError(
      'payload_too_large',
      `the messages exceed MAX_PROMPT_CHARS (${config.maxPromptChars})`,
    );
  }
  const model = src.model ?? config.defaultModel;
  if (typeof model !== 'string' || !config.allowedModels.includes(model)) {
    throw new ProxyError(
      'invalid_request',
      `unknown model "${String(model).slice(0, 64)}"; allowed: ${config.allowedModels.join(', ')}`,
    );
  }
  if (src.stream !== undefined && typeof src.stream !== 'boolean') {
    throw new ProxyError('invalid_request', '"stream" must be a boolean');
  }
  // One choice: DeepSeek documents no `n`, and an answer is assembled, continued and journaled
  // as one (several would be merged into a garbled one).
  if (src.n !== undefined && src.n !== null && src.n !== 1) {
    throw new ProxyError('invalid_request', '"n" must be 1: one choice per request');
  }
  const target = resolveModel(model);
  const body = { ...src, model: target.model } as UpstreamBody;
  if (target.thinking && src.thinking === undefined) body.thinking = { type: target.thinking };
  return body;
}

/**
 * What a message gives the model to read: its content, an assistant's earlier reasoning and the
 * names and arguments of its tool calls (a long tool-call argument is as much a prompt as long
 * content; not counting it let any prompt past MAX_PROMPT_CHARS).
 */
function messageChars(m: Record<string, unknown>): number {
  let n = contentChars(m.content);
  if (typeof m.reasoning_content === 'string') n += m.reasoning_content.length;
  if (Array.isArray(m.tool_calls)) {
    for (const call of m.tool_calls as unknown[]) {
      const f = (call as { function?: { name?: unknown; arguments?: unknown } } | null)?.function;
      if (typeof f?.name === 'string') n += f.name.length;
      if (typeof f?.arguments === 'string') n += f.arguments.length;
    }
  }
  return n;
}

/**
 * The characters of a message's content: a string, or the OpenAI array of parts (`[{type:
 * 'text', text}]`, which DeepSeek takes too and the AI SDK sends for several text parts). Not
 * counting the parts let any prompt past MAX_PROMPT_CHARS.
 */
function contentChars(c: unknown): number {
  if (typeof c === 'string') return c.length;
  if (!Array.isArray(c)) return 0;
  let n = 0;
  for (const part of c as unknown[]) {
    const text = (part as { text?: unknown } | null)?.text;
    if (typeof text === 'string') n += text.length;
  }
  return n;
}

const PING = ': ping\n\n';

/** Streaming: the upstream's chunk objects verbatim, one write per upstream read. */
class OpenAiStreamSink implements StreamListener {
  bytesOut = 0;
  status = 0;
  /** Text written since the last byte run (or since the last flush). */
  private pending = '';
  /** What comes before `pending` in the next write, in order: text, and the upstream's bytes. */
  private parts: Array<string | Buffer> = [];
  /** The open run of the upstream's own bytes: `run[runStart, runEnd)`. */
  private run: Buffer | undefined;
  private runStart = 0;
  private runEnd = 0;
  private headPending = false;
  /** `: ping` comments while nothing else is sent (a long DeepSeek queue), as on /chat-stream. */
  private heartbeat: Heartbeat | undefined;
  constructor(
    private readonly res: ServerResponse,
    private readonly requestId: string,
    private readonly heartbeatMs: number,
  ) {}

  open(): void {
    this.status = 200;
    this.headPending = true;
    this.res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
      'X-Request-Id': this.requestId,
    });
    // The head goes out with the first flush (the first chunks, or a short hold): one write, not two.
    // SSE clients (the openai package, the AI SDK) skip comment lines.
    this.heartbeat = new Heartbeat(this.res, this.heartbeatMs, this);
  }
  /** The heartbeat's: nothing was written for a while. */
  ping(): void {
    this.bytesOut += PING.length;
    this.res.write(PING);
    if (this.headPending) this.headWentOut();
  }
  /** A chunk that came as text (not on the byte path): possibly several `data:` lines. */
  chunk(data: string): void {
    if (this.run !== undefined) this.closeRun();
    const lines = data.includes('\n') ? data.replaceAll('\n', '\ndata: ') : data;
    this.pending += `data: ${lines}\n\n`;
  }
  // Hot path: the upstream's `data: <chunk>\n\n` lines go out as the very bytes that came in;
  // consecutive ones are one range of the upstream's buffer. No decode, no re-encode.
  chunkBytes(buf: Buffer, start: number, end: number): void {
    if (buf[start - 1] !== 32 /* `data:` without a space: write it as ours */) {
      this.chunk(buf.toString('utf8', start, end));
      return;
    }
    const lineStart = start - 6;
    if (this.run === buf && this.runEnd === lineStart) {
      this.runEnd = end + 2;
      return;
    }
    if (this.run !== undefined || this.pending !== '') this.closeRun();
    this.run = buf;
    this.runStart = lineStart;
    this.runEnd = end + 2;
  }
  content(): void {}
  reasoning(): void {}
  /** A retry before the first token: its chunks (the role chunk) would come again. */
  discard(): void {
    this.pending = '';
    this.parts = [];
    this.run = undefined;
  }
  flush(): boolean {
    const out = this.take('');
    if (out.length === 0) {
      if (this.headPending) {
        this.res.flushHeaders();
        this.headWentOut();
      }
      return true;
    }
    this.heartbeat?.wrote();
    const ok = writeChunk(this.res, out);
    if (this.headPending) this.headWentOut();
    return ok;
  }
  /** The head went out with the write just made: Node's copies of it can go (flat.ts). */
  private headWentOut(): void {
    this.headPending = false;
    releaseHead(this.res);
  }
  /** The last events, [DONE] and the end of the body in one write. */
  end(): void {
    this.heartbeat?.stop();
    this.headPending = false;
    this.res.end(this.take('data: [DONE]\n\n'));
  }
  fail(err: ProxyError, opened: boolean): void {
    this.heartbeat?.stop();
    if (!opened || !this.res.headersSent) return sendJsonError(this.res, err, this.requestId, this);
    // In-band: an error object the OpenAI SDKs raise as an APIError.
    this.headPending = false;
    this.res.end(this.take(`data: ${JSON.stringify(openAiErrorBody(err, this.requestId))}\n\n`));
  }

  /** The parts of `parts` and `pending` in order. */
  private closeRun(): void {
    if (this.pending !== '') {
      this.parts.push(this.pending);
      this.pending = '';
    }
    if (this.run !== undefined) {
      this.parts.push(this.run.subarray(this.runStart, this.runEnd));
      this.run = undefined;
    }
  }

  /** Everything pending and then `last`, as one string or Buffer; pending is emptied. */
  private take(last: string): string | Buffer {
    let out: string | Buffer;
    if (this.parts.length === 0 && this.run === undefined) {
      out = this.pending + last;
      this.pending = '';
      this.bytesOut += Buffer.byteLength(out);
      return out;
    }
    this.closeRun();
    if (last !== '') this.parts.push(last);
    const parts = this.parts;
    this.parts = [];
    if (parts.length === 1 && typeof parts[0] !== 'string') out = parts[0]!;
    else out = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
    this.bytesOut += out.length;
    return out;
  }
}

interface ToolCall {
  index: number;
  id?: string;
  type?: string;
  function: { name: string; arguments: string };
}

/** Non-stream: one chat.completion assembled from the upstream's chunks. */
class OpenAiAggregateSink implements StreamListener {
  bytesOut = 0;
  status = 0;
  private id = '';
  private created = 0;
  private model = '';
  private fingerprint: string | undefined;
  private answer = '';
  private reasoningText = '';
  private toolCalls: ToolCall[] = [];
  /** Token log probabilities, when the request asked for them (`logprobs: true`). */
  private logprobs: unknown[] | undefined;
  constructor(
    private readonly res: ServerResponse,
    private readonly requestId: string,
  ) {}

  open(): void {}
  /** The interpreter passes only chunks that parsed; a shape we cannot use fails the stream. */
  chunk(data: string): void {
    const c = JSON.parse(data) as {
      id?: string;
      created?: number;
      model?: string;
      system_fingerprint?: string;
      choices?: Array<{
        delta?: {
          content?: string | null;
          reasoning_content?: string | null;
          tool_calls?: ToolCall[];
        };
        logprobs?: { content?: unknown } | null;
      }>;
    };
    if (!this.id && c.id) this.id = c.id;
    if (!this.created && c.created) this.created = c.created;
    if (!this.model && c.model) this.model = c.model;
    if (c.system_fingerprint) this.fingerprint = c.system_fingerprint;
    const lp = c.choices?.[0]?.logprobs?.content;
    if (Array.isArray(lp)) (this.logprobs ??= []).push(...(lp as unknown[]));
    const d = c.choices?.[0]?.delta;
    if (!d) return;
    if (typeof d.content === 'string') this.answer += d.content;
    if (typeof d.reasoning_content === 'string') this.reasoningText += d.reasoning_content;
    const calls = d.tool_calls ?? [];
    if (!Array.isArray(calls)) throw badChunk('tool_calls is not an array');
    for (const t of calls) {
      if (typeof t !== 'object' || t === null || !isSlot(t.index)) {
        throw badChunk('a tool call without a valid index');
      }
      const slot = (this.toolCalls[t.index] ??= {
        index: t.index,
        function: { name: '', arguments: '' },
      });
      if (t.id) slot.id = t.id;
      if (t.type) slot.type = t.type;
      if (t.function?.name) slot.function.name += t.function.name;
      if (t.function?.arguments) slot.function.arguments += t.function.arguments;
    }
  }
  content(): void {}
  reasoning(): void {}
  flush(): boolean {
    return true;
  }
  end(finishReason: string, usage: Usage | undefined): void {
    const message: Record<string, unknown> = { role: 'assistant', content: this.answer };
    if (this.reasoningText) message.reasoning_content = this.reasoningText;
    if (this.toolCalls.length > 0) {
      message.tool_calls = this.toolCalls.map(({ index: _i, ...t }) => ({
        type: 'function',
        ...t,
      }));
    }
    const body = JSON.stringify({
      id: this.id,
      object: 'chat.completion',
      created: this.created,
      model: this.model,
      system_fingerprint: this.fingerprint,
      choices: [
        {
          index: 0,
          message,
          logprobs: this.logprobs ? { content: this.logprobs } : null,
          finish_reason: finishReason,
        },
      ],
      usage: usage ?? null,
    });
    this.status = 200;
    this.bytesOut = Buffer.byteLength(body);
    this.res.writeHead(200, {
      'Content-Type': 'application/json; charset=utf-8',
      'X-Request-Id': this.requestId,
    });
    this.res.end(body);
  }
  fail(err: ProxyError): void {
    sendJsonError(this.res, err, this.requestId, this);
  }
}

function sendJsonError(
  res: ServerResponse,
  err: ProxyError,
  requestId: string,
  sink: { status: number },
): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  sink.status = err.status;
  const headers: Record<string, string> = {
    'Content-Type': 'application/json; charset=utf-8',
    'X-Request-Id': requestId,
  };
  if (err.retryAfterS !== undefined) headers['Retry-After'] = String(err.retryAfterS);
  res.writeHead(err.status, headers);
  res.end(JSON.stringify(openAiErrorBody(err, requestId)));
}

function badChunk(what: string): ProxyError {
  return new ProxyError('upstream_protocol_error', `malformed upstream chunk: ${what}`);
}

/** A tool call's index: a small non-negative integer (the answer is assembled by index). */
function isSlot(i: unknown): i is number {
  return Number.isInteger(i) && (i as number) >= 0 && (i as number) < 256;
}
