// test/integration/simulator-review.test.ts: the DeepSeek simulator against DeepSeek's documented
// behaviour and against what a user can type: bad bodies get readable errors, directives cannot
// exhaust memory, max_tokens and prefix completion answer as DeepSeek does, records stay bounded.

import http from 'node:http';
import { simulateAnswer } from '../../src/simulator/answer';
import { startSimulator, type Simulator } from '../../src/simulator/server';

let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator();
});
afterAll(() => sim.close());

interface Answer {
  status: number;
  body: string;
}

/** POST raw text to the simulator; a reset connection rejects. */
function postRaw(path: string, body: string | Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${sim.url}${path}`,
      {
        method: 'POST',
        headers: { authorization: 'Bearer k', 'content-type': 'application/json' },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (b: Buffer) => parts.push(b));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const post = (body: unknown, path = '/chat/completions') => postRaw(path, JSON.stringify(body));

/** The JSON data of each `data:` event of a stream body, `[DONE]` left out. */
function chunks(body: string): Array<Record<string, unknown>> {
  return body
    .split('\n\n')
    .map((e) => e.trim())
    .filter((e) => e.startsWith('data: ') && e !== 'data: [DONE]')
    .map((e) => JSON.parse(e.slice('data: '.length)) as Record<string, unknown>);
}

type Choice = { delta?: { content?: string | null }; finish_reason?: string | null };
const choicesOf = (c: Record<string, unknown>) => (c.choices as Choice[] | undefined) ?? [];
const streamText = (body: string) =>
  chunks(body)
    .flatMap((c) => choicesOf(c).map((ch) => ch.delta?.content ?? ''))
    .join('');
const finishOf = (body: string) =>
  chunks(body)
    .flatMap((c) => choicesOf(c).map((ch) => ch.finish_reason))
    .find((f) => typeof f === 'string');

describe('simulator: bodies DeepSeek would answer with an error', () => {
  it.each(['null', '42', '[]', '"text"'])(
    'a body that is JSON but not an object (%s) gets a 400 error object, not a reset',
    async (raw) => {
      const res = await postRaw('/chat/completions', raw);
      expect(res.status).toBe(400);
      expect(JSON.parse(res.body)).toHaveProperty('error.message');
    },
  );

  it('a messages list holding a null still answers from its user message', async () => {
    const res = await post({
      model: 'deepseek-v4-flash',
      messages: [{ role: 'user', content: 'null neighbour' }, null],
    });
    expect(res.status).toBe(200);
    const msg = (JSON.parse(res.body) as { choices: Array<{ message: { content: string } }> })
      .choices[0]!.message;
    expect(msg.content).toBe(simulateAnswer('null neighbour').text);
  });

  it('user content given as OpenAI text parts is answered like the same text as a string', async () => {
    const res = await post({
      model: 'deepseek-v4-flash',
      thinking: { type: 'disabled' },
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'parts ' },
            { type: 'text', text: 'joined' },
          ],
        },
      ],
    });
    expect(res.status).toBe(200);
    const msg = (JSON.parse(res.body) as { choices: Array<{ message: { content: string } }> })
      .choices[0]!.message;
    expect(msg.content).toBe(simulateAnswer('parts joined').text);
  });

  it.each([0, -3, 1.5, '5'])('max_tokens %p is refused with 422, as DeepSeek does', async (mt) => {
    const res = await post({
      model: 'deepseek-v4-flash',
      stream: true,
      max_tokens: mt,
      messages: [{ role: 'user', content: 'bad max tokens' }],
    });
    expect(res.status).toBe(422);
    expect(JSON.parse(res.body)).toHaveProperty('error.message');
  });

  it('a body over the size bound is refused with 413 without being kept', async () => {
    const big = Buffer.alloc(17 * 1024 * 1024, 0x20);
    const res = await postRaw('/chat/completions', big);
    expect(res.status).toBe(413);
    expect(JSON.parse(res.body)).toHaveProperty('error.message');
  });
});

describe('simulator: what a typed prompt can ask for', () => {
  it('a huge tokens directive is clamped: the answer comes, and the server lives on', async () => {
    // Before the bound, this built an array of 10^11 tokens: the heap ran out and the process
    // (with `npm start` and no key: the proxy's own) died.
    const prompt = 'greedy [[tokens=99999999999 rtokens=99999999999]]';
    const res = await post({
      model: 'deepseek-v4-flash',
      max_tokens: 3,
      messages: [{ role: 'user', content: prompt }],
    });
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as {
      choices: Array<{
        message: { content: string; reasoning_content: string };
        finish_reason: string;
      }>;
    };
    const expected = simulateAnswer(prompt, { thinking: true });
    expect(expected.content.length).toBeLessThanOrEqual(1_000_000);
    expect(expected.reasoning.length).toBeLessThanOrEqual(1_000_000);
    // max_tokens counts the chain of thought too (as DeepSeek does): it takes all three.
    expect(body.choices[0]!.message.content).toBe('');
    expect(body.choices[0]!.message.reasoning_content).toBe(
      expected.reasoning.slice(0, 3).join(''),
    );
    expect(body.choices[0]!.finish_reason).toBe('length');
    const after = await post({
      model: 'deepseek-v4-flash',
      messages: [{ role: 'user', content: 'still here' }],
    });
    expect(after.status).toBe(200);
  });

  it('a huge repeat directive is clamped too: long tokens, but an answer', async () => {
    const prompt = 'long words [[tokens=2 repeat=999999999]]';
    const res = await post({
      model: 'deepseek-v4-flash',
      stream: true,
      thinking: { type: 'disabled' },
      messages: [{ role: 'user', content: prompt }],
    });
    expect(res.status).toBe(200);
    expect(streamText(res.body)).toBe(simulateAnswer(prompt).text);
    expect(finishOf(res.body)).toBe('stop');
  });

  it('a finish= value with a quote still gives a finish chunk that is valid JSON', async () => {
    const res = await post({
      model: 'deepseek-v4-flash',
      stream: true,
      thinking: { type: 'disabled' },
      messages: [{ role: 'user', content: 'odd finish [[finish=a"b\\ finish-after=2]]' }],
    });
    expect(res.status).toBe(200);
    expect(finishOf(res.body)).toBe('a"b\\');
  });
});

describe('simulator: directives out of range', () => {
  it('a status no HTTP response can have is ignored, not a reset connection', async () => {
    const res = await post({
      model: 'deepseek-v4-flash',
      stream: true,
      messages: [{ role: 'user', content: 'odd status [[status=9999 tokens=3]]' }],
    });
    expect(res.status).toBe(200);
    expect(streamText(res.body)).toBe(simulateAnswer('odd status [[status=9999 tokens=3]]').text);
  });

  it('a fractional frag splits into whole bytes and the answer ends', async () => {
    const prompt = 'tiny frag [[frag=0.001 tokens=3]]';
    const res = await post({
      model: 'deepseek-v4-flash',
      stream: true,
      messages: [{ role: 'user', content: prompt }],
    });
    expect(streamText(res.body)).toBe(simulateAnswer(prompt).text);
  }, 5_000);

  it('a port already taken is a rejected start, not an uncaught error', async () => {
    await expect(startSimulator({ port: sim.port })).rejects.toThrow(/EADDRINUSE/);
  });
});

describe('simulator: max_tokens and prefix completion', () => {
  it('non-stream answers honour max_tokens: cut text, finish_reason length, real usage', async () => {
    const prompt = 'non stream cut [[tokens=10]]';
    const res = await post({
      model: 'deepseek-v4-flash',
      thinking: { type: 'disabled' },
      max_tokens: 4,
      messages: [{ role: 'user', content: prompt }],
    });
    const body = JSON.parse(res.body) as {
      choices: Array<{ message: { content: string }; finish_reason: string }>;
      usage: { completion_tokens: number };
    };
    expect(body.choices[0]!.message.content).toBe(
      simulateAnswer(prompt).content.slice(0, 4).join(''),
    );
    expect(body.choices[0]!.finish_reason).toBe('length');
    expect(body.usage.completion_tokens).toBe(4);
  });

  it('a non-stream prefix completion answers the continuation, not the whole answer', async () => {
    const prompt = 'non stream prefix [[tokens=10]]';
    const full = simulateAnswer(prompt).content;
    const res = await post(
      {
        model: 'deepseek-v4-flash',
        messages: [
          { role: 'user', content: prompt },
          { role: 'assistant', content: full.slice(0, 6).join(''), prefix: true },
        ],
      },
      '/beta/chat/completions',
    );
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as { choices: Array<{ message: { content: string } }> };
    expect(body.choices[0]!.message.content).toBe(full.slice(6).join(''));
  });

  it('a prefix completion whose rest fits in max_tokens finishes with stop', async () => {
    const prompt = 'prefix fits [[tokens=24]]';
    const full = simulateAnswer(prompt).content;
    const res = await post(
      {
        model: 'deepseek-v4-flash',
        stream: true,
        max_tokens: 20,
        messages: [
          { role: 'user', content: prompt },
          { role: 'assistant', content: full.slice(0, 10).join(''), prefix: true },
        ],
      },
      '/beta/chat/completions',
    );
    expect(streamText(res.body)).toBe(full.slice(10).join(''));
    expect(finishOf(res.body)).toBe('stop');
  });
});

describe('simulator: what it keeps', () => {
  it('recorded requests stay bounded however many requests come', async () => {
    sim.reset();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    const one = (i: number) =>
      new Promise<void>((resolve, reject) => {
        const req = http.request(
          `${sim.url}/chat/completions`,
          { method: 'POST', agent, headers: { authorization: 'Bearer k' } },
          (res) => {
            res.resume();
            res.on('end', resolve);
          },
        );
        req.on('error', reject);
        // An unknown model: the cheapest request the simulator records.
        req.end(JSON.stringify({ model: 'nope', messages: [{ role: 'user', content: `n${i}` }] }));
      });
    for (let i = 0; i < 1200; i += 8) {
      await Promise.all(Array.from({ length: 8 }, (_, k) => one(i + k)));
    }
    agent.destroy();
    expect(sim.requests.length).toBeGreaterThan(0);
    expect(sim.requests.length).toBeLessThanOrEqual(1000);
    // The newest are the ones kept.
    expect(sim.requests.at(-1)!.body.messages![0]!.content).toBe('n1199');
  });
});
