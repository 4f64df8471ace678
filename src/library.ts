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
  const config = loadConfig({ ...process.env, LOG_LEVEL: 'silent' });
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

/** The answer text of streamChat() as a Node Readable (reasoning left out). */
export function toReadable(options: StreamChatOptions): Readable {
  const iterator = streamChat(options);
  return Readable.from(
    (async function* () {
      for await (const d of iterator) if (d.type === 'content') yield d.text;
    })(),
    { objectMode: false },
  );
}

function abortError(): Error {
  const e = new Error('the stream was aborted');
  e.name = 'AbortError';
  return e;
}
