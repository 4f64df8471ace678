// With the in-memory journal, a new stream's upstream request goes out in the event-loop turn its
// request arrived in: the route does not await the journal's claim, so what was queued meanwhile
// (the ticks of the request's own body stream ending, for one) runs after it, not on the path to
// the first token (docs/BENCHMARKS.md, "Changes since the 13:06 run").

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { createApp } from '../../src/app';
import { testConfig } from '../../src/config';
import { MemoryJournalStore } from '../../src/journal/memory-store';
import type { Claim, JournalStore } from '../../src/journal/types';
import { createLogger } from '../../src/log';
import type { UpstreamClient } from '../../src/upstream/client';
import { eventStreamClient } from '../helpers/engine';

const ANSWER =
  'data: {"choices":[{"index":0,"delta":{"content":"same turn"},"finish_reason":null}]}\n\n' +
  'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n' +
  'data: [DONE]\n\n';

/** An upstream that answers ANSWER up to `answers` times, calling `onPost` on every request. */
function watchedClient(answers: number, onPost: () => void): UpstreamClient {
  const bodies = Array.from({ length: answers }, () => new PassThrough().end(ANSWER));
  const inner = eventStreamClient(...bodies);
  return {
    post: (...args) => {
      onPost();
      return inner.post(...args);
    },
    close: () => inner.close(),
  };
}

it('sends a new stream upstream before the ticks queued as its request came in', async () => {
  let ticked = false;
  const tickedAtPost: boolean[] = [];
  const client = watchedClient(2, () => tickedAtPost.push(ticked));
  // The request rate limit and the per-client stream cap await their stores before the route:
  // both off here, as in the bench (one client) or behind a gateway that does the limiting, so
  // what is tested is the route's own path to the upstream request.
  const app = createApp(
    testConfig({
      useSimulator: false,
      deepseekApiKey: 'sk-test',
      rateLimitMax: 0,
      maxStreamsPerClient: 0,
    }),
    { client, logger: createLogger('silent') },
  );
  const server = http.createServer((req, res) => {
    ticked = false;
    process.nextTick(() => {
      ticked = true;
    });
    app(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const { port } = server.address() as AddressInfo;
    for (const format of ['text', 'sse']) {
      const res = await fetch(`http://127.0.0.1:${port}/chat-stream?prompt=hi&format=${format}`);
      expect(res.status).toBe(200);
      expect(await res.text()).toContain('same turn');
    }
    expect(tickedAtPost).toEqual([false, false]);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    await app.close();
  }
});

it('awaits a claim that comes as any thenable, not only a native promise', async () => {
  // A store passed in through createApp's options (Redis's is one) may answer with a thenable
  // of another library or realm: `instanceof Promise` would take it for the claim itself.
  const inner = new MemoryJournalStore({
    ttlMs: 60_000,
    maxBytesPerStream: 100_000,
    maxBytesTotal: 1_000_000,
  });
  const journal = Object.assign(Object.create(inner) as MemoryJournalStore, {
    create(id: string, fingerprint: string): PromiseLike<Claim> {
      return {
        then(onClaim, onError) {
          return Promise.resolve()
            .then(() => inner.create(id, fingerprint))
            .then(onClaim, onError);
        },
      };
    },
  }) as JournalStore;
  let posts = 0;
  const client = watchedClient(2, () => posts++);
  const app = createApp(testConfig({ useSimulator: false, deepseekApiKey: 'sk-test' }), {
    client,
    journal,
    logger: createLogger('silent'),
  });
  const server = http.createServer(app);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const { port } = server.address() as AddressInfo;
    const url = `http://127.0.0.1:${port}/chat-stream?prompt=hi&format=text`;
    const headers = { 'x-request-id': 'thenable-1' };
    const first = await fetch(url, { headers });
    expect(first.status).toBe(200);
    expect(await first.text()).toBe('same turn');
    // The same id again: the claim is refused (a thenable of { created: false }), and the
    // stream is replayed from the journal, not generated twice.
    const again = await fetch(url, { headers });
    expect(again.status).toBe(200);
    expect(await again.text()).toBe('same turn');
    expect(posts).toBe(1);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    await app.close();
    inner.shutdown();
  }
});
