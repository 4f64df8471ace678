// When the engine asks its listener to write: the response begins with the first token (or after
// a hold, during a long queue), the first token goes out at the end of the upstream read that
// brought it (later ones once per event-loop turn), and an answer whose end arrives with its last
// tokens is told in that same read, so they leave in one write. Before it began, a failure is a
// JSON error and a retry leaves no trace.

import { PassThrough } from 'node:stream';
import { testConfig } from '../../src/config';
import { engineSettings } from '../../src/service';
import { ChatStream, type StreamListener } from '../../src/stream/chat-stream';
import { UpstreamAbortedError, type UpstreamClient } from '../../src/upstream/client';
import type { UpstreamBody } from '../../src/upstream/request';

const SETTINGS = engineSettings(testConfig({ retryBaseDelayMs: 1, retryMaxDelayMs: 1 }));
const HOLD = SETTINGS.headHoldMs;

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
function setup(
  override: (log: string[]) => Partial<StreamListener> = () => ({}),
  bodies: PassThrough[] = [new PassThrough()],
) {
  const body = bodies[0]!;
  const log: string[] = [];
  let posts = 0;
  const client: UpstreamClient = {
    post: () =>
      Promise.resolve({
        status: 200,
        headers: { 'content-type': 'text/event-stream' },
        body: bodies[Math.min(posts++, bodies.length - 1)]!,
      }),
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
  const stream = new ChatStream(client, SETTINGS, BODY, listener);
  const done = stream.run();
  return { body, log, done, stream };
}

/** Resolve when `pred` holds, checking once per event-loop turn (timers are fake here). */
async function until(pred: () => boolean, what: string, turns = 200, tickMs = 0): Promise<void> {
  for (let i = 0; !pred(); i++) {
    if (i >= turns) throw new Error(`no ${what} after ${turns} event-loop turns`);
    if (tickMs > 0) jest.advanceTimersByTime(tickMs); // a retry's backoff sleeps on a timer
    await new Promise((r) => setImmediate(r));
  }
}

/** The engine reads this upstream body. */
const reading = (body: PassThrough, tickMs = 0) =>
  until(() => body.listenerCount('data') > 0, 'the upstream read', 200, tickMs);

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
    await reading(body);
    body.write(chunk({ role: 'assistant', content: '' }));
    await turns(5);
    expect(log).toEqual([]); // the role chunk brought no token: the response has not begun

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
    await reading(body);
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

  it(`sends the head alone when no token came within headHoldMs (${HOLD} ms)`, async () => {
    const { body, log, done } = setup();
    await reading(body);
    body.write(': keep-alive\n\n'); // a read, but no token
    await turns(3);
    jest.advanceTimersByTime(HOLD - 1);
    expect(log).toEqual([]);
    jest.advanceTimersByTime(1);
    expect(log).toEqual(['open', 'flush']);
    body.end(chunk({ content: 'x' }, 'stop') + 'data: [DONE]\n\n');
    await done;
    expect(log.slice(2, 4)).toEqual(['content:x', 'end:stop']);
  });

  it("before the first token: a retry drops the failed attempt's chunks, a last failure is not opened", async () => {
    const first = new PassThrough();
    const second = new PassThrough();
    const { log, done } = setup(
      (log) => ({
        chunk: (d) => log.push(`chunk:${d.includes('role') ? 'role' : 'other'}`),
        discard: () => log.push('discard'),
        fail: (err, opened) => log.push(`fail:${err.code}:${opened}`),
      }),
      [first, second],
    );
    await reading(first);
    first.write(chunk({ role: 'assistant', content: '' }));
    first.destroy(); // reset before any token
    await reading(second, 1);
    expect(log).toEqual(['chunk:role', 'discard']); // nothing opened, nothing flushed
    second.write(chunk({ role: 'assistant', content: '' }));
    second.end(chunk({ content: 'A' }, 'stop') + 'data: [DONE]\n\n');
    await done;
    expect(log.filter((e) => e !== 'flush')).toEqual([
      'chunk:role',
      'discard',
      'chunk:role',
      'chunk:other',
      'open',
      'end:stop',
    ]);

    // Every attempt fails before a token: the failure is told as not opened (a JSON error).
    const bodies = Array.from({ length: SETTINGS.retryMax + 1 }, () => new PassThrough());
    const failing = setup(
      (log) => ({ fail: (err, opened) => log.push(`fail:${err.code}:${opened}`) }),
      bodies,
    );
    for (const b of bodies) {
      await reading(b, 1);
      b.destroy();
    }
    await failing.done;
    expect(failing.log).toEqual(['fail:upstream_unavailable:false']);
  });

  it('the hold starts again with each attempt: retries never let it run out', async () => {
    const first = new PassThrough();
    const second = new PassThrough();
    const { log, done } = setup(() => ({}), [first, second]);
    await reading(first);
    jest.advanceTimersByTime(HOLD - 10);
    first.destroy(); // the first attempt fails just before its hold would have run out
    await reading(second, 1);
    jest.advanceTimersByTime(20); // past the first attempt's hold: nothing began
    expect(log).toEqual([]);
    jest.advanceTimersByTime(HOLD);
    expect(log).toEqual(['open', 'flush']); // the second attempt's own hold
    second.end(chunk({ content: 'x' }, 'stop') + 'data: [DONE]\n\n');
    await done;
  });

  it('reports a throwing end() as an internal error of this stream, not of the process', async () => {
    const { body, log, done, stream } = setup((log) => ({
      end: () => {
        throw new Error('bug in end');
      },
      fail: (err, opened) => log.push(`fail:${err.code}:${opened}`),
    }));
    await reading(body);
    body.end(chunk({ content: 'x' }, 'stop') + 'data: [DONE]\n\n');
    await done;
    expect(log.filter((e) => e !== 'flush')).toEqual([
      'open',
      'content:x',
      'fail:internal_error:true',
    ]);
    expect(stream.stats.outcome).toBe('failed');
  });

  it('flushes every stream read in a turn once at its end; a flush that throws fails its stream only', async () => {
    let aFlushes = 0;
    const a = setup((log) => ({
      flush: () => {
        log.push('flush');
        // The first flush is the first token's, inside its read; the second the turn's.
        if (++aFlushes === 2) throw new Error('bug in flush');
        return true;
      },
      fail: (err, opened) => log.push(`fail:${err.code}:${opened}`),
    }));
    const b = setup();
    const c = setup();
    await Promise.all([reading(a.body), reading(b.body), reading(c.body)]);
    for (const s of [a, b, c]) s.body.write(chunk({ content: 'x' }));
    for (const s of [a, b, c]) s.body.write(chunk({ content: 'y' }));
    for (const s of [a, b, c]) s.body.write(chunk({ content: 'z' }));
    // Within the turn: each stream's first token flushed in its read, the rest waits.
    expect(b.log).toEqual(['open', 'content:x', 'flush', 'content:y', 'content:z']);
    await turns(3);
    // At the end of the turn: one flush each, the throwing one's stream failed, the others not.
    expect(b.log).toEqual(['open', 'content:x', 'flush', 'content:y', 'content:z', 'flush']);
    expect(c.log).toEqual(b.log);
    await a.done;
    expect(a.log.slice(-2)).toEqual(['flush', 'fail:internal_error:true']);
    expect(a.stream.stats.outcome).toBe('failed');
    for (const s of [b, c]) s.body.end(chunk({}, 'stop') + 'data: [DONE]\n\n');
    await Promise.all([b.done, c.done]);
    expect(b.log).toContain('end:stop');
    expect(c.log).toContain('end:stop');
  });

  it('a flush that throws after its attempt ended in the same turn stops the stream, not the process', async () => {
    // The upstream breaks in the turn that brought tokens; the continuation's request is still
    // on its way when the turn's flush runs (and throws).
    const body = new PassThrough();
    let posts = 0;
    const client: UpstreamClient = {
      post: (_path, _body, abort) =>
        posts++ === 0
          ? Promise.resolve({ status: 200, headers: {}, body })
          : new Promise((_resolve, reject) => {
              // Answers only when aborted, as the real client does.
              abort.onAbort = () => reject(new UpstreamAbortedError());
            }),
      close: () => undefined,
    };
    const log: string[] = [];
    let flushes = 0;
    const listener: StreamListener = {
      open: () => log.push('open'),
      content: (t) => log.push(`content:${t}`),
      reasoning: () => undefined,
      flush: () => {
        log.push('flush');
        if (++flushes === 2) throw new Error('bug in flush');
        return true;
      },
      end: (reason) => log.push(`end:${reason}`),
      fail: (err, opened) => log.push(`fail:${err.code}:${opened}`),
    };
    const stream = new ChatStream(client, SETTINGS, BODY, listener);
    const done = stream.run();
    await reading(body);
    body.write(chunk({ content: 'x' }));
    body.write(chunk({ content: 'y' }));
    body.destroy(new Error('connection reset'));
    await done;
    expect(posts).toBe(2); // the continuation was asked for
    expect(log).toEqual([
      'open',
      'content:x',
      'flush',
      'content:y',
      'flush',
      'fail:internal_error:true',
    ]);
    expect(stream.stats.outcome).toBe('failed');
    expect(stream.stats.cause).toEqual(new Error('bug in flush'));
  });
});

describe('a continued answer and max_tokens', () => {
  it("asks only for what is left: the taken-over prefix's tokens count too", async () => {
    const posted: unknown[] = [];
    const body = new PassThrough();
    const client: UpstreamClient = {
      post: (_path, b) => {
        posted.push(b);
        return Promise.resolve({
          status: 200,
          headers: { 'content-type': 'text/event-stream' },
          body,
        });
      },
      close: () => undefined,
    };
    const log: string[] = [];
    const listener: StreamListener = {
      open: () => log.push('open'),
      content: (t) => log.push(`content:${t}`),
      reasoning: () => undefined,
      flush: () => true,
      end: (reason) => log.push(`end:${reason}`),
      fail: (err) => log.push(`fail:${err.code}`),
    };
    const stream = new ChatStream(client, SETTINGS, { ...BODY, max_tokens: 10 }, listener, {
      prefix: 'one two three',
      prefixTokens: 3,
    });
    const done = stream.run();
    await reading(body);
    body.end(chunk({ content: ' four' }, 'length') + 'data: [DONE]\n\n');
    await done;
    const sent = posted[0] as UpstreamBody;
    expect(sent.max_tokens).toBe(7);
    expect(sent.messages.at(-1)).toMatchObject({ role: 'assistant', content: 'one two three' });
    expect(log).toContain('end:length');
  });

  it("reports the whole answer's usage: the prefix comes off the prompt, and off its cache misses", async () => {
    const body = new PassThrough();
    const client: UpstreamClient = {
      post: () =>
        Promise.resolve({ status: 200, headers: { 'content-type': 'text/event-stream' }, body }),
      close: () => undefined,
    };
    let usage: unknown;
    const listener: StreamListener = {
      open: () => undefined,
      content: () => undefined,
      reasoning: () => undefined,
      flush: () => true,
      end: (_reason, u) => void (usage = u),
      fail: () => undefined,
    };
    const stream = new ChatStream(client, SETTINGS, BODY, listener, {
      prefix: 'one two three',
      prefixTokens: 5, // two reasoning tokens, then three of the answer
      prefixAnswerTokens: 3,
    });
    const done = stream.run();
    await reading(body);
    // The continuation's own usage: its prompt holds the 3 prefix tokens (10 cached + 3 new).
    const u = {
      prompt_tokens: 13,
      completion_tokens: 1,
      total_tokens: 14,
      prompt_cache_hit_tokens: 10,
      prompt_cache_miss_tokens: 3,
      completion_tokens_details: { reasoning_tokens: 0 },
    };
    body.end(
      `data: ${JSON.stringify({ id: 'c1', choices: [{ index: 0, delta: { content: ' four' }, finish_reason: 'stop' }], usage: u })}\n\n` +
        'data: [DONE]\n\n',
    );
    await done;
    expect(usage).toEqual({
      prompt_tokens: 10,
      completion_tokens: 6,
      total_tokens: 16,
      prompt_cache_hit_tokens: 10,
      prompt_cache_miss_tokens: 0,
      completion_tokens_details: { reasoning_tokens: 2 },
    });
  });
});
