// The library: streamChat() as an AsyncIterable of deltas, abort by signal or by break, and the
// Readable adapter.

import { streamChat, toReadable, type ChatDelta } from '../../src/library';
import { simulateAnswer } from '../../src/simulator/answer';
import { startSimulator, type Simulator } from '../../src/simulator/server';
import { TEST_KEY, waitFor } from '../helpers/stack';

let sim: Simulator;
beforeAll(async () => {
  sim = await startSimulator();
});
afterAll(() => sim.close());

const opts = () => ({ apiKey: TEST_KEY, baseUrl: sim.url });

describe('streamChat', () => {
  it('yields reasoning, then content, then done, matching the simulator', async () => {
    const deltas: ChatDelta[] = [];
    for await (const d of streamChat({ ...opts(), prompt: 'library hello' })) deltas.push(d);
    const answer = simulateAnswer('library hello', { thinking: true });
    const text = (t: string) =>
      deltas
        .filter((d) => d.type === t)
        .map((d) => (d as { text: string }).text)
        .join('');
    expect(text('reasoning')).toBe(answer.reasoningText);
    expect(text('content')).toBe(answer.text);
    const done = deltas.at(-1)!;
    expect(done.type).toBe('done');
    expect(done.type === 'done' && done.finishReason).toBe('stop');
  });

  it('breaking out of the loop aborts the upstream request', async () => {
    const prompt = 'library break [[tokens=500 delay=10]]';
    let n = 0;
    for await (const d of streamChat({ ...opts(), prompt, thinking: false })) {
      if (d.type === 'content' && ++n === 3) break;
    }
    await waitFor(
      () =>
        sim.requests.find((r) => r.body.messages?.[0]?.content === prompt)?.clientClosed === true,
    );
  });

  it('an aborted signal ends the iteration with an AbortError and closes the upstream', async () => {
    const prompt = 'library abort [[tokens=500 delay=10]]';
    const ac = new AbortController();
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const d of streamChat({
          ...opts(),
          prompt,
          thinking: false,
          signal: ac.signal,
        })) {
          if (d.type === 'content') seen.push(d.text);
          if (seen.length === 2) ac.abort();
        }
      })(),
    ).rejects.toMatchObject({ name: 'AbortError' });
    await waitFor(
      () =>
        sim.requests.find((r) => r.body.messages?.[0]?.content === prompt)?.clientClosed === true,
    );
  });

  it('upstream errors are thrown as ProxyError with the SPEC code', async () => {
    await expect(
      (async () => {
        for await (const _ of streamChat({ ...opts(), prompt: 'library 402 [[status=402]]' }))
          void _;
      })(),
    ).rejects.toMatchObject({ code: 'upstream_insufficient_balance' });
  });

  it('toReadable gives the answer text as a Node stream', async () => {
    const parts: string[] = [];
    for await (const chunk of toReadable({ ...opts(), prompt: 'library readable' }))
      parts.push(String(chunk));
    expect(parts.join('')).toBe(simulateAnswer('library readable').text);
  });

  it('destroying the Readable while it waits for a token aborts the upstream at once', async () => {
    const prompt = 'library readable destroy [[stall-first=4000]]';
    const readable = toReadable({ ...opts(), prompt, thinking: false });
    readable.on('error', () => undefined);
    readable.resume();
    const rec = () => sim.requests.find((r) => r.body.messages?.[0]?.content === prompt);
    await waitFor(() => rec() !== undefined);
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    readable.destroy();
    await waitFor(() => rec()!.clientClosed, 2000, 'the upstream abort');
    expect(Date.now() - t0).toBeLessThan(2000); // not when the first token came (4 s)
  });

  it("ignores the server's settings: a production NODE_ENV or a bad PORT does not matter", async () => {
    const saved = { NODE_ENV: process.env.NODE_ENV, PORT: process.env.PORT };
    process.env.NODE_ENV = 'production';
    process.env.PORT = 'notaport';
    try {
      let text = '';
      for await (const d of streamChat({ ...opts(), prompt: 'library in production' }))
        if (d.type === 'content') text += d.text;
      expect(text).toBe(simulateAnswer('library in production').text);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('refuses to run without a key or a prompt, saying how to fix it', async () => {
    const it1 = streamChat({ baseUrl: sim.url, prompt: 'x', apiKey: undefined });
    const saved = process.env.DEEPSEEK_API_KEY;
    delete process.env.DEEPSEEK_API_KEY;
    try {
      await expect(it1.next()).rejects.toThrow(/apiKey/);
    } finally {
      if (saved !== undefined) process.env.DEEPSEEK_API_KEY = saved;
    }
    await expect(streamChat({ ...opts() }).next()).rejects.toThrow(/prompt or messages/);
  });
});
