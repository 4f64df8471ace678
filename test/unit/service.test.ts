// ChatService.run(): a stream it admitted is forgotten when it ends, however it ends, so the
// global cap and a drain never wait for a stream that is not running.

import { Readable, Writable } from 'node:stream';
import { testConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { ChatService } from '../../src/service';
import type { StreamListener } from '../../src/stream/chat-stream';
import type { UpstreamClient } from '../../src/upstream/client';
import { quietListener } from '../helpers/engine';

const listener = quietListener();
const client: UpstreamClient = {
  post: () => Promise.reject(new Error('not reached')),
  close: () => undefined,
};
const meta = {
  requestId: 'r2',
  route: '/chat-stream',
  format: 'sse',
  model: 'deepseek-v4-flash',
};
const body = {
  model: 'deepseek-v4-flash',
  messages: [{ role: 'user' as const, content: 'hi' }],
  stream: true as const,
};

it('a stream whose bind() throws is rejected and forgotten, and a drain does not wait for it', async () => {
  const service = new ChatService(testConfig(), client, createLogger('silent'));
  const run = service.run(
    body,
    listener,
    { requestId: 'r1', route: '/chat-stream', format: 'sse', model: 'deepseek-v4-flash' },
    () => {
      throw new Error('bind failed');
    },
  );
  await expect(run).rejects.toThrow('bind failed');
  expect(service.active.size).toBe(0);
  const drained = await Promise.race([
    service.drain(5_000).then(() => 'drained'),
    new Promise((r) => setTimeout(() => r('waited'), 1_000)),
  ]);
  expect(drained).toBe('drained');
});

it('a stream whose listener throws from end() and fail() is still forgotten and logged once', async () => {
  const sse =
    'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n' +
    'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
  const answering: UpstreamClient = {
    post: () =>
      Promise.resolve({
        status: 200,
        headers: { 'content-type': 'text/event-stream' },
        body: Readable.from([Buffer.from(sse)]),
      }),
    close: () => undefined,
  };
  const lines: string[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const throwing: StreamListener = {
    ...listener,
    end: () => {
      throw new Error('end bug');
    },
    fail: () => {
      throw new Error('fail bug');
    },
  };
  const service = new ChatService(testConfig(), answering, createLogger('info', dest));
  const run = service.run(body, throwing, meta, () => undefined);
  await expect(run).rejects.toThrow('fail bug');
  expect(service.active.size).toBe(0);
  expect(lines.filter((l) => l.includes('"requestId":"r2"'))).toHaveLength(1);
  const drained = await Promise.race([
    service.drain(5_000).then(() => 'drained'),
    new Promise((r) => setTimeout(() => r('waited'), 1_000)),
  ]);
  expect(drained).toBe('drained');
});
