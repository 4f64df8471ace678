// Seamless upstream resume: when DeepSeek breaks after answer tokens were sent, the proxy
// continues through chat prefix completion (/beta) and the client sees one answer, no gap, no
// repeat at the seam.

import { simulateAnswer } from '../../src/simulator/answer';
import { parseSse, q, request, sseText, startStack, type Stack } from '../helpers/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ retryMax: 2, upstreamResumeMax: 2, idleTimeoutMs: 300 });
});
afterAll(() => stack.close());

const BASE = 'seam base';

/** The simulator's uninterrupted wire bytes for BASE, fetched directly (not through the proxy). */
async function referenceBody(): Promise<Buffer> {
  const res = await fetch(stack.sim.url + '/chat/completions', {
    method: 'POST',
    headers: { authorization: 'Bearer x', 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'deepseek-v4-flash',
      messages: [{ role: 'user', content: BASE }],
      stream: true,
      stream_options: { include_usage: true },
      thinking: { type: 'disabled' },
    }),
  });
  return Buffer.from(await res.arrayBuffer());
}

/** Answer text carried by the complete events within the first `n` bytes. */
function textWithin(body: Buffer, n: number): string {
  const head = body.subarray(0, n).toString('utf8');
  const complete = head.slice(0, head.lastIndexOf('\n\n') + 2);
  let text = '';
  for (const block of complete.split('\n\n')) {
    if (!block.startsWith('data: {')) continue;
    const chunk = JSON.parse(block.slice(6));
    const c = chunk.choices?.[0]?.delta?.content;
    if (typeof c === 'string') text += c;
  }
  return text;
}

/** 20 cut points: right after the first token, inside multi-byte characters, and spread out. */
function cutPoints(body: Buffer): number[] {
  const text = body.toString('latin1'); // byte offsets
  const events: Array<[number, number]> = [];
  let at = 0;
  for (;;) {
    const end = text.indexOf('\n\n', at);
    if (end < 0) break;
    events.push([at, end + 2]);
    at = end + 2;
  }
  const content = events.filter(([s, e]) => /"content":"[^"]/.test(text.slice(s, e)));
  const firstEnd = content[0]![1];
  const lastStart = content[content.length - 1]![0];
  const cuts = new Set<number>([firstEnd, firstEnd + 1, firstEnd + 7]);
  // Inside multi-byte characters: after the lead byte of a few of them.
  for (let i = firstEnd; i < lastStart && cuts.size < 10; i++) {
    if (body[i]! >= 0xc0) {
      cuts.add(i + 1);
      i += 40;
    }
  }
  for (let k = 1; cuts.size < 20; k++) {
    cuts.add(firstEnd + Math.floor(((lastStart - firstEnd) * k) / 12) + (k % 3));
  }
  return [...cuts].sort((a, b) => a - b);
}

describe('upstream resume at the seam', () => {
  it('20 cut points: the client text equals the uninterrupted answer, /beta got exactly the text sent', async () => {
    const ref = await referenceBody();
    const expected = simulateAnswer(BASE).text;
    const cuts = cutPoints(ref);
    expect(cuts).toHaveLength(20);
    let i = 0;
    for (const cut of cuts) {
      const prompt = `${BASE} [[cut=${cut} delay=1]]`;
      const sse = i++ % 2 === 0;
      const res = await request(
        stack.url + q(prompt, `&thinking=false${sse ? '&format=sse' : ''}`),
      );
      expect(res.status).toBe(200);
      const got = sse ? sseText(parseSse(res.body).events) : res.body;
      expect({ cut, got }).toEqual({ cut, got: expected });
      if (sse) expect(parseSse(res.body).events.at(-1)!.event).toBe('done');
      else expect(res.complete).toBe(true);
      const beta = stack.sim.requests.filter(
        (r) => r.path === '/beta/chat/completions' && r.body.messages?.[0]?.content === prompt,
      );
      expect(beta).toHaveLength(1);
      const last = beta[0]!.body.messages!.at(-1)!;
      expect(last.role).toBe('assistant');
      expect(last.prefix).toBe(true);
      expect(last.content).toBe(textWithin(ref, cut));
      expect(beta[0]!.body.thinking).toEqual({ type: 'disabled' });
    }
  }, 60_000);

  it('a cut-off finish (insufficient_system_resource) is continued, not reported as the end', async () => {
    const prompt = `${BASE} [[finish=insufficient_system_resource finish-after=5 delay=1]]`;
    const res = await request(stack.url + q(prompt, '&thinking=false&format=sse'));
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe(simulateAnswer(BASE).text);
    expect(JSON.parse(events.at(-1)!.data).finish_reason).toBe('stop');
  });

  it.each([
    ['a cut-off finish', 'finish=insufficient_system_resource finish-after=5 delay=1'],
    ['a reset', 'reset=5 delay=1'],
  ])(
    '/v1 stream: %s is continued as one answer, one role chunk, no cut-off finish',
    async (_n, d) => {
      const res = await request(`${stack.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          stream: true,
          thinking: { type: 'disabled' },
          messages: [{ role: 'user', content: `${BASE} [[${d}]]` }],
        }),
      });
      const chunks = res.body
        .split('\n\n')
        .filter((e) => e.startsWith('data: {'))
        .map((e) => JSON.parse(e.slice(6)));
      const text = chunks.map((c) => c.choices?.[0]?.delta?.content ?? '').join('');
      expect(text).toBe(simulateAnswer(BASE).text);
      expect(chunks.filter((c) => c.choices?.[0]?.delta?.role)).toHaveLength(1);
      const finishes = chunks.map((c) => c.choices?.[0]?.finish_reason).filter((f) => f);
      expect(finishes).toEqual(['stop']);
      expect(res.body.endsWith('data: [DONE]\n\n')).toBe(true);
    },
  );

  it('an idle upstream mid-answer is continued', async () => {
    const prompt = `${BASE} [[stall-after=6 stall=3000 delay=1]]`;
    const res = await request(stack.url + q(prompt, '&thinking=false'));
    expect(res.complete).toBe(true);
    expect(res.body).toBe(simulateAnswer(BASE).text);
  });

  it('SSE ids keep counting across the seam', async () => {
    const prompt = `${BASE} [[reset=5 delay=1]]`;
    const res = await request(stack.url + q(prompt, '&thinking=false&format=sse'), {
      headers: { 'x-request-id': 'seam-ids' },
    });
    const { events } = parseSse(res.body);
    expect(events.map((e) => e.id)).toEqual(events.map((_, i) => `seam-ids:${i + 1}`));
  });

  it('stops after UPSTREAM_RESUME_MAX splices with an in-band error', async () => {
    const prompt = `${BASE} [[reset=2 times=9 delay=1]]`;
    const res = await request(stack.url + q(prompt, '&thinking=false&format=sse'));
    const { events } = parseSse(res.body);
    const full = simulateAnswer(BASE).text;
    const got = sseText(events);
    expect(full.startsWith(got)).toBe(true);
    expect(got.length).toBeLessThan(full.length);
    expect(events.at(-1)!.event).toBe('error');
    const beta = stack.sim.requests.filter(
      (r) => r.path === '/beta/chat/completions' && r.body.messages?.[0]?.content === prompt,
    );
    expect(beta).toHaveLength(2);
  });

  it('a break during reasoning is an in-band error, not a splice', async () => {
    const prompt = `${BASE} reasoning [[reset=0 delay=1 times=9]]`;
    const res = await request(stack.url + q(prompt, '&format=sse'));
    const { events } = parseSse(res.body);
    expect(events.some((e) => e.event === 'reasoning')).toBe(true);
    expect(events.some((e) => e.event === 'message')).toBe(false);
    expect(events.at(-1)!.event).toBe('error');
    expect(
      stack.sim.requests.some(
        (r) => r.path === '/beta/chat/completions' && r.body.messages?.[0]?.content === prompt,
      ),
    ).toBe(false);
  });
});

describe('max_tokens across a continuation', () => {
  it('the spliced answer stops at the client max_tokens, not max_tokens past the seam', async () => {
    const prompt = 'seam limit [[tokens=30 reset=5 delay=1]]';
    const before = stack.sim.requests.length;
    const res = await request(stack.url + q(prompt, '&format=sse&thinking=false&max_tokens=10'));
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe(simulateAnswer(prompt).content.slice(0, 10).join(''));
    expect(JSON.parse(events.at(-1)!.data).finish_reason).toBe('length');
    const sent = stack.sim.requests.slice(before);
    expect(sent.map((r) => r.path)).toEqual(['/chat/completions', '/beta/chat/completions']);
    expect(sent[1]!.body.max_tokens).toBe(5);
  });

  it('counts the reasoning too: DeepSeek counts the chain of thought in max_tokens', async () => {
    const prompt = 'seam think limit [[tokens=30 rtokens=4 reset=5 delay=1]]';
    const before = stack.sim.requests.length;
    const res = await request(stack.url + q(prompt, '&format=sse&thinking=true&max_tokens=14'));
    const { events } = parseSse(res.body);
    const answer = simulateAnswer(prompt, { thinking: true });
    // 4 reasoning and 5 answer tokens before the break: 5 left, not 9.
    const sent = stack.sim.requests.slice(before);
    expect(sent.map((r) => r.path)).toEqual(['/chat/completions', '/beta/chat/completions']);
    expect(sent[1]!.body.max_tokens).toBe(5);
    expect(sseText(events)).toBe(answer.content.slice(0, 10).join(''));
    expect(JSON.parse(events.at(-1)!.data).finish_reason).toBe('length');
  });
});

describe('usage across a continuation', () => {
  const uninterrupted = (prompt: string, thinking: boolean) => {
    const a = simulateAnswer(prompt, { thinking });
    const reasoning = thinking ? a.reasoning.length : 0;
    const promptTokens = Math.ceil(prompt.length / 4);
    return {
      prompt_tokens: promptTokens,
      completion_tokens: reasoning + a.content.length,
      total_tokens: promptTokens + reasoning + a.content.length,
      completion_tokens_details: { reasoning_tokens: reasoning },
    };
  };

  it("is the whole answer's, not the continuation's: SSE done event", async () => {
    const prompt = 'seam usage [[tokens=30 rtokens=4 reset=5 delay=1]]';
    const res = await request(stack.url + q(prompt, '&format=sse&thinking=true'));
    const { events } = parseSse(res.body);
    const done = JSON.parse(events.at(-1)!.data);
    expect(done.finish_reason).toBe('stop');
    expect(done.usage).toEqual(uninterrupted(prompt, true));
  });

  it('/v1: the usage chunk passed through says the same', async () => {
    const prompt = 'seam usage v1 [[tokens=30 reset=5 delay=1]]';
    const res = await request(stack.url + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'deepseek-chat',
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: 'user', content: prompt }],
      }),
    });
    const chunks = res.body
      .split('\n\n')
      .filter((l) => l.startsWith('data: {'))
      .map(
        (l) =>
          JSON.parse(l.slice(6)) as {
            usage?: unknown;
            choices: Array<{ delta?: { content?: string } }>;
          },
      );
    const withUsage = chunks.filter((c) => c.usage);
    expect(withUsage).toHaveLength(1);
    expect(withUsage[0]!.usage).toEqual(uninterrupted(prompt, false));
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).toBe(
      simulateAnswer(prompt).text,
    );
  });
});
