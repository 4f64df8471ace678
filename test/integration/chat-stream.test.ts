// The core path: /chat-stream in text and SSE relays exactly the simulator's answer, under every
// wire condition the simulator can produce.

import http from 'node:http';
import { simulateAnswer } from '../../src/simulator/answer';
import { parseSse, q, request, sseText, startStack, type Stack } from '../helpers/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(() => stack.close());

const expected = (prompt: string) => simulateAnswer(prompt).text;

describe('text mode', () => {
  it('streams the answer as plain chunked text with the stream headers', async () => {
    const res = await request(stack.url + q('hello there'));
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(res.headers['cache-control']).toBe('no-cache, no-transform');
    expect(res.headers['x-accel-buffering']).toBe('no');
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers['content-encoding']).toBeUndefined();
    expect(res.complete).toBe(true);
    expect(res.body).toBe(expected('hello there'));
  });

  it('leaves reasoning out unless include_reasoning is asked for', async () => {
    const prompt = 'think aloud';
    const answer = simulateAnswer(prompt, { thinking: true });
    const plain = await request(stack.url + q(prompt));
    expect(plain.body).toBe(answer.text);
    const withReasoning = await request(stack.url + q(prompt, '&include_reasoning=true'));
    expect(withReasoning.body).toBe(answer.reasoningText + answer.text);
  });

  it('accepts POST with a prompt or with messages', async () => {
    const a = await request(stack.url + '/chat-stream', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'posted prompt' }),
    });
    expect(a.status).toBe(200);
    expect(a.body).toBe(expected('posted prompt'));
    const b = await request(stack.url + '/chat-stream', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        messages: [
          { role: 'system', content: 'be brief' },
          { role: 'user', content: 'posted messages' },
        ],
      }),
    });
    expect(b.status).toBe(200);
    expect(b.body).toBe(expected('posted messages'));
  });

  it('keeps a sane client X-Request-Id and replaces an unsafe one', async () => {
    const kept = await request(stack.url + q('id please'), {
      headers: { 'x-request-id': 'abc-123_X.y' },
    });
    expect(kept.headers['x-request-id']).toBe('abc-123_X.y');
    const replaced = await request(stack.url + q('id please 2'), {
      headers: { 'x-request-id': 'bad id with:colon' },
    });
    expect(replaced.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('SSE mode', () => {
  it('frames tokens as the SPEC says: retry first, ids <requestId>:<seq>, reasoning, done', async () => {
    const prompt = 'sse framing';
    const answer = simulateAnswer(prompt, { thinking: true });
    const res = await request(stack.url + q(prompt, '&format=sse'), {
      headers: { 'x-request-id': 'req-sse-1' },
    });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(res.headers['cache-control']).toBe('no-cache, no-transform');
    expect(res.headers['x-accel-buffering']).toBe('no');
    expect(res.body).toMatch(/^retry: 3000\nid: [\w.-]+:0\n\n/);
    const { events, retry } = parseSse(res.body);
    expect(retry).toBe(3000);
    expect(events.map((e) => e.id)).toEqual(events.map((_, i) => `req-sse-1:${i + 1}`));
    const reasoning = events.filter((e) => e.event === 'reasoning');
    expect(reasoning.map((e) => JSON.parse(e.data).content).join('')).toBe(answer.reasoningText);
    expect(sseText(events)).toBe(answer.text);
    const last = events[events.length - 1]!;
    expect(last.event).toBe('done');
    const done = JSON.parse(last.data);
    expect(done.finish_reason).toBe('stop');
    expect(done.usage.completion_tokens).toBe(answer.content.length + answer.reasoning.length);
    // Reasoning comes before the answer, as DeepSeek sends it.
    const firstMessage = events.findIndex((e) => e.event === 'message');
    expect(events.slice(firstMessage).some((e) => e.event === 'reasoning')).toBe(false);
  });

  // The head waits for the first token for one heartbeat period at most: during a long queue
  // (silence, or DeepSeek's keep-alive comments) the client still sees the stream open.
  it.each([
    ['silence', 'stall-first=400'],
    ['keep-alive comments', 'queue=400 ka=50'],
  ])('sends the head alone when the first token is late (%s)', async (_name, directive) => {
    const held = await startStack({ heartbeatMs: 100 });
    const prompt = `late first token ${directive} [[tokens=3 ${directive}]]`;
    const t0 = Date.now();
    try {
      const seen = await new Promise<{ head: number; token: number; before: string }>(
        (resolve, reject) => {
          let head = 0;
          let before = '';
          const req = http.get(held.url + q(prompt, '&format=sse'), { agent: false }, (res) => {
            head = Date.now() - t0;
            res.on('data', (c: Buffer) => {
              const text = c.toString('utf8');
              if (!text.includes('"content"')) before += text;
              else if (!req.destroyed) {
                resolve({ head, token: Date.now() - t0, before });
                req.destroy();
              }
            });
          });
          req.on('error', reject);
        },
      );
      // The simulator waits 400 ms before the first token; the head came well before it.
      expect(seen.token - seen.head).toBeGreaterThanOrEqual(150);
      expect(seen.before).toMatch(/^retry: 3000\nid: [\w.-]+:0\n\n/);
    } finally {
      await held.close();
    }
  });

  it('leads with the head and the retry field even when a heartbeat is due first', async () => {
    const fast = await startStack({ heartbeatMs: 5 });
    try {
      const res = await request(
        fast.url + q('ping before head [[tokens=2 stall-first=100]]', '&format=sse'),
      );
      expect(res.status).toBe(200);
      expect(res.body).toMatch(/^retry: 3000\nid: [\w.-]+:0\n\n/);
      const { comments, events } = parseSse(res.body);
      expect(comments.length).toBeGreaterThan(0); // the pings did go out, after the head
      expect(events.at(-1)?.event).toBe('done');
    } finally {
      await fast.close();
    }
  });

  it('is chosen by Accept: text/event-stream, and format=text wins over Accept', async () => {
    const byAccept = await request(stack.url + q('accept sse'), {
      headers: { accept: 'text/event-stream' },
    });
    expect(byAccept.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    const forced = await request(stack.url + q('accept sse', '&format=text'), {
      headers: { accept: 'text/event-stream' },
    });
    expect(forced.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(forced.body).toBe(expected('accept sse'));
  });

  it('is not chosen by an Accept that refuses it (q=0) or only matches it by a wildcard', async () => {
    const cases: Array<[string, string]> = [
      ['text/event-stream;q=0, text/plain', 'text/plain'],
      ['text/plain, Text/Event-Stream; q=0.0', 'text/plain'],
      ['*/*', 'text/plain'],
      ['text/*', 'text/plain'],
      ['application/json, TEXT/EVENT-STREAM ; q=0.5', 'text/event-stream'],
    ];
    for (const [accept, type] of cases) {
      const res = await request(stack.url + q('accept q'), { headers: { accept } });
      expect([accept, res.headers['content-type']]).toEqual([accept, `${type}; charset=utf-8`]);
    }
  });
});

describe('models', () => {
  it('maps the retired aliases: deepseek-chat is v4-flash without thinking', async () => {
    const res = await request(stack.url + q('alias chat', '&model=deepseek-chat&format=sse'));
    expect(res.status).toBe(200);
    const { events } = parseSse(res.body);
    expect(events.some((e) => e.event === 'reasoning')).toBe(false);
    const sent = stack.sim.requests.find((r) => r.body.messages?.[0]?.content === 'alias chat');
    expect(sent?.body.model).toBe('deepseek-v4-flash');
    expect(sent?.body.thinking).toEqual({ type: 'disabled' });
  });

  it('maps deepseek-reasoner to v4-flash with thinking on, and thinking=false turns it off', async () => {
    await request(stack.url + q('alias reasoner', '&model=deepseek-reasoner'));
    const sent = stack.sim.requests.find((r) => r.body.messages?.[0]?.content === 'alias reasoner');
    expect(sent?.body).toMatchObject({ model: 'deepseek-v4-flash', thinking: { type: 'enabled' } });
    await request(stack.url + q('pro no thinking', '&model=deepseek-v4-pro&thinking=false'));
    const sent2 = stack.sim.requests.find(
      (r) => r.body.messages?.[0]?.content === 'pro no thinking',
    );
    expect(sent2?.body).toMatchObject({ model: 'deepseek-v4-pro', thinking: { type: 'disabled' } });
  });

  it('never sends the API key anywhere but the upstream Authorization header', async () => {
    const res = await request(stack.url + q('key check', '&format=sse'));
    expect(res.body).not.toContain(stack.config.deepseekApiKey!);
    expect(JSON.stringify(res.headers)).not.toContain(stack.config.deepseekApiKey!);
  });
});

describe('every wire condition relays the exact text', () => {
  const cases: Array<[string, string]> = [
    ['single-byte fragments', 'frag=1'],
    ['3-byte fragments (splitting multi-byte characters)', 'frag=3'],
    ['coalesced writes', 'coalesce'],
    ['CRLF line endings', 'crlf'],
    ['CR line endings', 'cr'],
    ['a byte order mark', 'bom'],
    ['keep-alive comments while queued', 'queue=60 ka=10'],
    ['keep-alives during a mid-stream stall', 'stall-after=5 stall=60 ka=10'],
    ['CR endings in single bytes with a BOM', 'cr frag=1 bom'],
  ];
  for (const [name, directive] of cases) {
    it(`text: ${name}`, async () => {
      const prompt = `wire text ${name} [[${directive}]]`;
      const res = await request(stack.url + q(prompt));
      expect(res.status).toBe(200);
      expect(res.complete).toBe(true);
      expect(res.body).toBe(expected(prompt));
      expect(res.body).not.toContain('\ufffd');
    });
    it(`SSE: ${name}`, async () => {
      const prompt = `wire sse ${name} [[${directive}]]`;
      const res = await request(stack.url + q(prompt, '&format=sse'));
      expect(res.status).toBe(200);
      const { events } = parseSse(res.body);
      expect(sseText(events)).toBe(expected(prompt));
      expect(events[events.length - 1]!.event).toBe('done');
    });
  }

  it('a usage-only chunk (include_usage) and usage on the finish chunk both reach done', async () => {
    const res = await request(stack.url + q('usage shape', '&format=sse'));
    const done = parseSse(res.body).events.find((e) => e.event === 'done')!;
    expect(JSON.parse(done.data).usage.total_tokens).toBeGreaterThan(0);
  });
});
