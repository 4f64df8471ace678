// library.ts: the streaming library for Node programs. streamChat() is an AsyncIterable of
// deltas over the same engine the server uses; breaking out of the loop (or aborting the
// signal) aborts the upstream request. toReadable() adapts it to a Node Readable of text.

import { Readable } from 'node:stream';
import { loadConfig } from './config';
import { ProxyError } from './errors';
import { ChatStream, type StreamListener } from './stream/chat-stream';
import type { Usage } from './stream/interpreter';
import { engineSettings } from './service';
import { createUpstreamClient, type UpstreamClient } from './upstream/client';
import { buildUpstreamBody, type ChatMessage, type ChatParams } from './upstream/request';

export type ChatDelta =
  | { type: 'content'; text: string }
  | { type: 'reasoning'; text: string }
  | { type: 'done'; finishReason: string; usage: Usage | undefined };

export interface StreamChatOptions {
  prompt?: string;
  messages?: ChatMessage[];
  model?: string;
  thinking?: boolean;
  temperature?: number;
  maxTokens?: number;
  /**
   * Continue an answer that already starts with this text (DeepSeek chat prefix completion);
   * only the continuation is yielded. Used by the CLI's --resume.
   */
  prefix?: string;
  signal?: AbortSignal;
  /** Defaults: DEEPSEEK_API_KEY and DEEPSEEK_BASE_URL from the environment. */
  apiKey?: string;
  baseUrl?: string;
  /** Reuse a client (and its socket pool) across calls. */
  client?: UpstreamClient;
}

/**
 * Stream one chat answer. Errors (upstream, time limits) are thrown from the iterator as
 * ProxyError; an aborted signal ends the iteration with an AbortError.
 */
export async function* streamChat(options: StreamChatOptions): AsyncGenerator<ChatDelta> {
  const config = libraryConfig();
  const apiKey = options.apiKey ?? config.deepseekApiKey;
  if (!options.client && !apiKey) {
    throw new TypeError('streamChat needs an apiKey option or DEEPSEEK_API_KEY in the environment');
  }
  const messages =
    options.messages ??
    (options.prompt !== undefined
      ? [{ role: 'user' as const, content: options.prompt }]
      : undefined);
  if (!messages) throw new TypeError('streamChat needs a prompt or messages');
  const ownClient = options.client === undefined;
  const client =
    options.client ??
    createUpstreamClient({
      baseUrl: options.baseUrl ?? config.deepseekBaseUrl,
      apiKey: apiKey!,
      maxSockets: 4,
      connectTimeoutMs: config.connectTimeoutMs,
    });
  const params: ChatParams = { messages, model: options.model ?? config.defaultModel };
  if (options.thinking !== undefined) params.thinking = options.thinking;
  if (options.temperature !== undefined) params.temperature = options.temperature;
  if (options.maxTokens !== undefined) params.max_tokens = options.maxTokens;

  // A bounded hand-off between the engine (push) and this generator (pull): when the queue is
  // full the engine is told to back off, which pauses the upstream socket.
  const queue: ChatDelta[] = [];
  let failure: ProxyError | undefined;
  let finished = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const HIGH_WATER = 256;
  const listener: StreamListener = {
    open() {},
    content(text) {
      queue.push({ type: 'content', text });
    },
    reasoning(text) {
      queue.push({ type: 'reasoning', text });
    },
    flush() {
      notify();
      return queue.length < HIGH_WATER;
    },
    end(finishReason, usage) {
      queue.push({ type: 'done', finishReason, usage });
      finished = true;
      notify();
    },
    fail(err) {
      failure = err;
      finished = true;
      notify();
    },
  };
  const stream = new ChatStream(
    client,
    engineSettings(config),
    buildUpstreamBody(params),
    listener,
    { prefix: options.prefix },
  );
  const onAbort = () => {
    stream.abort();
    notify();
  };
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const running = stream.run();
  try {
    for (;;) {
      if (options.signal?.aborted) throw abortError();
      const next = queue.shift();
      if (next !== undefined) {
        if (queue.length < HIGH_WATER / 2) stream.resume();
        yield next;
        continue;
      }
      if (failure) throw failure;
      if (finished) return;
      await new Promise<void>((resolve) => {
        wake = resolve;
        if (options.signal?.aborted) resolve();
      });
      if (options.signal?.aborted && stream.stats.outcome === 'client_aborted') throw abortError();
    }
  } finally {
    // The consumer stopped (break, throw, abort): stop the producer.
    options.signal?.removeEventListener('abort', onAbort);
    stream.abort();
    await running;
    if (ownClient) client.close();
  }
}

/**
 * The answer text of streamChat() as a Node Readable (reasoning left out). destroy() aborts the
 * upstream at once, even while a read waits for the next token (an iterator's return() would
 * wait behind that read, for as long as a queue lasts).
 */
export function toReadable(options: StreamChatOptions): Readable {
  const stop = new AbortController();
  const outer = options.signal;
  const onOuter = () => stop.abort(outer?.reason);
  if (outer?.aborted) onOuter();
  else outer?.addEventListener('abort', onOuter, { once: true });
  const iterator = streamChat({ ...options, signal: stop.signal });
  let pumping = false;
  const readable = new Readable({
    read() {
      void pump();
    },
    destroy(err, callback) {
      outer?.removeEventListener('abort', onOuter);
      stop.abort(); // the pending read of the iterator ends with an AbortError, ignored here
      callback(err);
    },
  });
  // Pull deltas while the reader wants more; push() returning false waits for the next read().
  async function pump(): Promise<void> {
    if (pumping) return;
    pumping = true;
    try {
      for (;;) {
        const r = await iterator.next();
        if (readable.destroyed) return;
        if (r.done) {
          readable.push(null);
          return;
        }
        if (r.value.type === 'content' && !readable.push(r.value.text)) return;
      }
    } catch (err) {
      if (!readable.destroyed) readable.destroy(err as Error);
    } finally {
      pumping = false;
    }
  }
  return readable;
}

/**
 * The engine's settings from the environment, and only the library's own variables (DeepSeek,
 * its model list, upstream, retry and time limits): a server's PORT or NODE_ENV rules are not
 * the library's. Throws ConfigError; the CLI calls it first to check the environment before it
 * touches its output file (not part of the package's exports).
 */
export function libraryConfig() {
  const env: NodeJS.ProcessEnv = { LOG_LEVEL: 'silent' };
  for (const [k, v] of Object.entries(process.env)) if (LIBRARY_ENV.test(k)) env[k] = v;
  return loadConfig(env);
}
const LIBRARY_ENV =
  /^(DEEPSEEK_(API_KEY|BASE_URL|MODEL)|ALLOWED_MODELS|UPSTREAM_\w+|RETRY_\w+|STREAM_MAX_DURATION_MS|MAX_EVENT_BYTES)$/;

function abortError(): Error {
  const e = new Error('the stream was aborted');
  e.name = 'AbortError';
  return e;
}
