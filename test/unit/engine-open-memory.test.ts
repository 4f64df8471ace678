// What an open stream's engine keeps while it waits for the next token: a regression guard for the
// per-stream objects measured in docs/BENCHMARKS.md ("memory per open stream"). Measured here on
// Node 20: 3,078 B per stream with run() an async function suspended for the stream's length and
// a Node timer for each of the idle and total limits, 2,294 B with neither (2026-11-30); with only
// the timers back (each with a closure), 2,909 B. The bound fails with either back.

import { PassThrough } from 'node:stream';
import { testConfig } from '../../src/config';
import { engineSettings } from '../../src/service';
import { ChatStream } from '../../src/stream/chat-stream';
import { CHAT_BODY, eventStreamClient, quietListener } from '../helpers/engine';
import { heapAfterGc } from '../helpers/heap';

const STREAMS = 2000;
const FIRST =
  'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash",' +
  '"system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},' +
  '"logprobs":null,"finish_reason":null}]}\n\n' +
  'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash",' +
  '"system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"Hello"},' +
  '"logprobs":null,"finish_reason":null}]}\n\n';

it(`${STREAMS} open engines, each past its first token, keep under a bound per stream`, async () => {
  const settings = engineSettings(testConfig());
  // The upstream bodies are the test's: made before the first reading.
  const bodies = Array.from({ length: STREAMS }, () => new PassThrough());
  const client = eventStreamClient(...bodies);
  const listener = quietListener(); // one for all: what is measured is the engines
  const chunk = Buffer.from(FIRST);
  const before = await heapAfterGc(true);
  const streams: ChatStream[] = [];
  const runs: Promise<void>[] = [];
  for (let i = 0; i < STREAMS; i++) {
    const s = new ChatStream(client, settings, CHAT_BODY, listener);
    streams.push(s);
    runs.push(s.run());
  }
  while (bodies[STREAMS - 1]!.listenerCount('data') === 0) {
    await new Promise((r) => setImmediate(r));
  }
  for (const b of bodies) b.write(chunk);
  await new Promise((r) => setImmediate(r));
  expect(streams.every((s) => s.stats.tokens === 1)).toBe(true);
  const perStream = ((await heapAfterGc(true)) - before) / STREAMS;
  for (const b of bodies) {
    b.end(
      'data: {"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
    );
  }
  await Promise.all(runs);
  expect(streams.every((s) => s.stats.outcome === 'completed')).toBe(true);
  console.log(`engine heap per open stream: ${Math.round(perStream)} B`);
  expect(perStream).toBeLessThan(2500);
});
