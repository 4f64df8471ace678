// Stand-ins for the engine's two collaborators in unit tests: a listener that ignores what it is
// told (override the calls a test watches), and an upstream client that answers each request
// with 200 and the next of the bodies it was given.

import type { Readable } from 'node:stream';
import type { StreamListener } from '../../src/stream/chat-stream';
import type { UpstreamClient } from '../../src/upstream/client';
import type { UpstreamBody } from '../../src/upstream/request';

/** A request body the engine can send. */
export const CHAT_BODY: UpstreamBody = {
  model: 'deepseek-v4-flash',
  messages: [{ role: 'user', content: 'hi' }],
  stream: true,
};

export function quietListener(over: Partial<StreamListener> = {}): StreamListener {
  return {
    open: () => undefined,
    content: () => undefined,
    reasoning: () => undefined,
    flush: () => true,
    end: () => undefined,
    fail: () => undefined,
    ...over,
  };
}

/** Each request is answered 200 text/event-stream with the next body; more requests throw. */
export function eventStreamClient(...bodies: Readable[]): UpstreamClient {
  let next = 0;
  return {
    post: () => {
      const body = bodies[next++];
      if (body === undefined) return Promise.reject(new Error('no more upstream bodies'));
      return Promise.resolve({
        status: 200,
        headers: { 'content-type': 'text/event-stream' },
        body,
      });
    },
    close: () => undefined,
  };
}
