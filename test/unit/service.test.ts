// ChatService.run(): a stream it admitted is forgotten when it ends, however it ends, so the
// global cap and a drain never wait for a stream that is not running.

import { testConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { ChatService } from '../../src/service';
import type { StreamListener } from '../../src/stream/chat-stream';
import type { UpstreamClient } from '../../src/upstream/client';

const listener: StreamListener = {
  open: () => undefined,
  content: () => undefined,
  reasoning: () => undefined,
  flush: () => true,
  end: () => undefined,
  fail: () => undefined,
};
const client: UpstreamClient = {
  post: () => Promise.reject(new Error('not reached')),
  close: () => undefined,
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
