// When the engine asks its listener to write: the head waits for the first token (or a short
// hold), the first token goes out at the end of the upstream read that brought it (later ones once
// per event-loop turn), and an answer whose end arrives with its last tokens is told in that same
// read, so they leave in one write.

import { PassThrough } from 'node:stream';
import { testConfig } from '../../src/config';
import { engineSettings } from '../../src/service';
import { ChatStream, HEAD_HOLD_MS, type StreamListener } from '../../src/stream/chat-stream';
import type { UpstreamClient } from '../../src/upstream/client';
import type { UpstreamBody } from '../../src/upstream/request';

const BODY: UpstreamBody = {
  model: 'deepseek-v4-flash',
  messages: [{ role: 'user', content: 'hi' }],
  stream: true,
};

function chunk(delta: Record<string, unknown>, finish: string | null = null): string {
  return `data: ${JSON.stringify({ id: 'c1', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
}

/**
 * A stream over a fake upstream whose body the test writes; every listener call in `log`, unless
 * `override` replaces it (it may log too).
 */
function setup(override: (log: string[]) => Partial<StreamListener> = () => ({})) {
  const body = new PassThrough();
  const log: string[] = [];
  const client: UpstreamClient = {
    post: () =>
      Promise.resolve({ status: 200, headers: { 'content-type': 'text/event-stream' }, body }),
    close: () => undefined,
  };
  const listener: StreamListener = {
    open: () => log.push('open'),
    content: (t) => log.push(`content:${t}`),
    reasoning: (t) => log.push(`reasoning:${t}`),
    flush: () => {
      log.push('flush');
      return true;
    },
    end: (reason) => log.push(`end:${reason}`),
    fail: (err) => log.push(`fail:${err.code}`),
    ...override(log),
  };
  const stream = new ChatStream(client, engineSettings(testConfig()), BODY, listener);
  const done = stream.run();
  return { body, log, done, stream };
}

/** Resolve when `pred` holds, checking once per event-loop turn (timers are fake here). */
async function until(pred: () => boolean, what: string, turns = 200): Promise<void> {
  for (let i = 0; !pred(); i++) {
    if (i >= turns) throw new Error(`no ${what} after ${turns} event-loop turns`);
    await new Promise((r) => setImmediate(r));
  }
}

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

// The engine's timers (the head hold among them) run only when a test advances them; the
// event loop itself (setImmediate, nextTick) is real. A PassThrough in flowing mode emits 'data'
// inside write(), so what the engine does within one upstream read is done when write() returns.
beforeEach(() => {
  jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
});
afterEach(() => {
  jest.useRealTimers();
});

describe('engine: when the listener writes', () => {
  it('holds the head past a read without a token, and writes the first token within its read', async () => {
    const { body, log, done } = setup();
    await until(() => log.includes('open'), 'open');
    body.write(chunk({ role: 'assistant', content: '' }));
    await turns(5);
    expect(log).toEqual(['open']); // the role chunk brought no token: the head still waits

    body.write(chunk({ content: 'Hel' }));
    // Within the read: the per-turn flush would come later, from setImmediate.
    expect(log).toEqual(['open', 'content:Hel', 'flush']);

    body.write(chunk({ content: 'lo' }));
    expect(log).toEqual(['open', 'content:Hel', 'flush', 'content:lo']); // later tokens: per turn
    await until(() => log.length === 5, 'the per-turn flush');
    expect(log[4]).toBe('flush');

    body.end(chunk({ content: '!' }, 'stop') + 'data: [DONE]\n\n');
    await done;
    expect(log.slice(5, 7)).toEqual(['content:!', 'end:stop']);
    expect(log.slice(7).every((e) => e === 'flush')).toBe(true); // after the end: no-ops
  });

  it('tells the end inside the read that brought it: tokens and end leave in one write', async () => {
    const { body, log, done } = setup();
    await until(() => log.includes('open'), 'open');
    body.write(
      chunk({ role: 'assistant', content: 'A' }) +
        chunk({ content: 'B' }) +
        chunk({ content: 'C' }, 'stop') +
        'data: [DONE]\n\n',
    );
    // Told within the read, and before any flush: the sink writes the pending tokens with the
    // done event. (The engine before told it a few promise turns later.)
    expect(log.slice(0, 5)).toEqual(['open', 'content:A', 'content:B', 'content:C', 'end:stop']);
    expect(log.slice(5).every((e) => e === 'flush')).toBe(true);
    await done;
  });

  it(`sends the head alone when no token came within ${HEAD_HOLD_MS} ms`, async () => {
    const { body, log, done } = setup();
    await until(() => log.includes('open'), 'open');
    body.write(': keep-alive\n\n'); // a read, but no token
    await turns(3);
    jest.advanceTimersByTime(HEAD_HOLD_MS - 1);
    expect(log).toEqual(['open']);
    jest.advanceTimersByTime(1);
    expect(log).toEqual(['open', 'flush']);
    body.end(chunk({ content: 'x' }, 'stop') + 'data: [DONE]\n\n');
    await done;
    expect(log.slice(2, 4)).toEqual(['content:x', 'end:stop']);
  });

  it('reports a throwing end() as an internal error of this stream, not of the process', async () => {
    const { body, log, done, stream } = setup((log) => ({
      end: () => {
        throw new Error('bug in end');
      },
      fail: (err, opened) => log.push(`fail:${err.code}:${opened}`),
    }));
    await until(() => log.includes('open'), 'open');
    body.end(chunk({ content: 'x' }, 'stop') + 'data: [DONE]\n\n');
    await done;
    expect(log.filter((e) => e !== 'flush')).toEqual([
      'open',
      'content:x',
      'fail:internal_error:true',
    ]);
    expect(stream.stats.outcome).toBe('failed');
  });
});
