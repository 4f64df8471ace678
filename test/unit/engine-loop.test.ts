// The engine's attempt loop, driven by callbacks (no async function suspended for the stream's
// length): a stop during a retry's wait ends the run at once, and a listener's bug reaches run()'s
// caller the way it did before (runEnded with the bug, or run()'s rejection).

import { PassThrough } from 'node:stream';
import { testConfig } from '../../src/config';
import { ProxyError } from '../../src/errors';
import { engineSettings } from '../../src/service';
import { ChatStream, type RunEnd } from '../../src/stream/chat-stream';
import type { UpstreamClient } from '../../src/upstream/client';
import { CHAT_BODY, eventStreamClient, quietListener } from '../helpers/engine';

/** An upstream that answers every request with 503 (a retryable status). */
function unavailable() {
  let posts = 0;
  const client: UpstreamClient = {
    post: () => {
      posts++;
      const body = new PassThrough();
      body.end('{"error":{"message":"busy"}}');
      return Promise.resolve({
        status: 503,
        headers: { 'content-type': 'application/json' },
        body,
      });
    },
    close: () => undefined,
  };
  return { client, posts: () => posts };
}

const within = <T>(p: Promise<T>, ms: number) =>
  Promise.race([
    p.then(() => 'settled'),
    new Promise<string>((r) => setTimeout(() => r('still running'), ms).unref()),
  ]);

it('stop() during the wait before a retry ends the run at once, with no further request', async () => {
  const up = unavailable();
  const failures: ProxyError[] = [];
  // A minute's backoff: the run can only settle within the test's time if the stop cuts it short.
  const settings = engineSettings(
    testConfig({ retryMax: 3, retryBaseDelayMs: 60_000, retryMaxDelayMs: 60_000 }),
  );
  const stream = new ChatStream(
    up.client,
    settings,
    CHAT_BODY,
    quietListener({ fail: (e) => void failures.push(e) }),
  );
  const run = stream.run();
  while (stream.stats.retries === 0) await new Promise((r) => setTimeout(r, 5));
  expect(await within(run, 200)).toBe('still running'); // it is waiting
  stream.stop(new ProxyError('shutting_down', 'the server is shutting down'));
  expect(await within(run, 5_000)).toBe('settled');
  expect(up.posts()).toBe(1);
  expect(failures.map((e) => e.code)).toEqual(['shutting_down']);
  expect(stream.stats.outcome).toBe('failed');
});

it("a listener's fail() that throws rejects run() when it has no end, and goes to runEnded when it has", async () => {
  const settings = engineSettings(testConfig({ retryMax: 0 }));
  const bug = new Error('listener bug');
  const throwing = () =>
    quietListener({
      fail: () => {
        throw bug;
      },
    });

  const bare = new ChatStream(unavailable().client, settings, CHAT_BODY, throwing());
  await expect(bare.run()).rejects.toBe(bug);

  const told: unknown[][] = [];
  const end: RunEnd<string> = {
    runEnded: (s, tag, bugs) => {
      expect(s.stats.outcome).toBe('failed');
      expect(tag).toBe('the tag');
      told.push(bugs);
    },
  };
  const withEnd = new ChatStream(unavailable().client, settings, CHAT_BODY, throwing());
  await expect(withEnd.run(end, 'the tag')).resolves.toBeUndefined();
  expect(told).toEqual([[bug]]);
});

it('runEnded is told once, before run() settles, and its own throw rejects run()', async () => {
  const settings = engineSettings(testConfig({ retryMax: 0 }));
  const order: string[] = [];
  const oops = new Error('runEnded bug');
  const stream = new ChatStream(unavailable().client, settings, CHAT_BODY, quietListener());
  const run = stream.run<number>(
    {
      runEnded: (_s, tag, bugs) => {
        order.push(`runEnded ${tag} ${bugs.length}`);
        throw oops;
      },
    },
    7,
  );
  await expect(run.finally(() => order.push('settled'))).rejects.toBe(oops);
  expect(order).toEqual(['runEnded 7 0', 'settled']);
});

it("a stop in the same turn as the answer's end tells the listener nothing more", async () => {
  const body = new PassThrough();
  const client = eventStreamClient(body);
  const told: string[] = [];
  const l = quietListener({
    end: (reason) => {
      told.push(`end ${reason}`);
      stream.stop(new ProxyError('shutting_down', 'the server is shutting down'));
    },
    fail: (e) => void told.push(`fail ${e.code}`),
  });
  const stream = new ChatStream(client, engineSettings(testConfig()), CHAT_BODY, l);
  const run = stream.run();
  body.end(
    'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n' +
      'data: {"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}]}\n\n' +
      'data: [DONE]\n\n',
  );
  await run;
  expect(told).toEqual(['end stop']);
  expect(stream.stats.outcome).toBe('completed');
});

it('an upstream client that throws at once is told to the caller after run() returned', async () => {
  const client: UpstreamClient = {
    post: () => {
      throw new Error('client bug');
    },
    close: () => undefined,
  };
  const failures: string[] = [];
  const stream = new ChatStream(
    client,
    engineSettings(testConfig({ retryMax: 0 })),
    CHAT_BODY,
    quietListener({ fail: (e) => void failures.push(e.code) }),
  );
  let ended = false;
  const run = stream.run({ runEnded: () => void (ended = true) }, undefined);
  expect(ended).toBe(false); // not from inside run()
  await run;
  expect(ended).toBe(true);
  expect(failures).toEqual(['internal_error']);
});

it("an abort from the listener's discard() ends the run without waiting for the retry", async () => {
  const up = unavailable();
  const settings = engineSettings(
    testConfig({ retryMax: 3, retryBaseDelayMs: 60_000, retryMaxDelayMs: 60_000 }),
  );
  const stream: ChatStream = new ChatStream(
    up.client,
    settings,
    CHAT_BODY,
    quietListener({ discard: () => stream.abort() }),
  );
  expect(await within(stream.run(), 5_000)).toBe('settled');
  expect(up.posts()).toBe(1);
  expect(stream.stats.outcome).toBe('client_aborted');
});
