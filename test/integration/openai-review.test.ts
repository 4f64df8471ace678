// /v1/chat/completions as real clients meet it, in the cases a review found broken: a prompt sent
// as an array of content parts, and the byte count of a non-stream answer in the log line (a client
// that leaves while a guard waits on Redis: guard-races.test.ts).

import { simulateAnswer } from '../../src/simulator/answer';
import { request, startStack, type Stack } from '../helpers/stack';

describe('/v1 limits and accounting', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ maxPromptChars: 1000 });
  });
  afterAll(() => stack.close());

  const post = (body: object) =>
    request(`${stack.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  it('n other than 1 is refused (several choices would be merged into one)', async () => {
    const res = await post({ n: 2, messages: [{ role: 'user', content: 'two choices' }] });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body).error.code).toBe('invalid_request');
    expect(JSON.parse(res.body).error.message).toMatch(/"n"/);
    const one = await post({ n: 1, messages: [{ role: 'user', content: 'one choice' }] });
    expect(one.status).toBe(200);
  });

  it('content given as an array of text parts counts toward MAX_PROMPT_CHARS', async () => {
    const tag = 'parts over the limit';
    const res = await post({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: tag },
            { type: 'text', text: 'x'.repeat(1000) },
          ],
        },
      ],
    });
    expect(res.status).toBe(413);
    expect(JSON.parse(res.body).error.code).toBe('payload_too_large');
    expect(JSON.stringify(stack.sim.requests.map((r) => r.body))).not.toContain(tag);
  });

  it.each([
    [
      'tool-call arguments',
      (tag: string) => ({
        role: 'assistant',
        content: '',
        tool_calls: [
          {
            id: 't1',
            type: 'function',
            function: { name: 'f', arguments: tag + 'x'.repeat(1000) },
          },
        ],
      }),
    ],
    [
      'earlier reasoning',
      (tag: string) => ({
        role: 'assistant',
        content: 'ok',
        reasoning_content: tag + 'y'.repeat(1000),
      }),
    ],
  ])('%s count toward MAX_PROMPT_CHARS too', async (what, message) => {
    const tag = `over the limit in ${what}`;
    const res = await post({
      messages: [{ role: 'user', content: 'hi' }, message(tag), { role: 'user', content: 'go on' }],
    });
    expect(res.status).toBe(413);
    expect(JSON.stringify(stack.sim.requests.map((r) => r.body))).not.toContain(tag);
  });

  it('tool definitions count toward MAX_PROMPT_CHARS', async () => {
    const tag = 'a very long tool description';
    const res = await post({
      messages: [{ role: 'user', content: 'hi' }],
      tools: [
        {
          type: 'function',
          function: { name: 'f', description: tag + 'z'.repeat(1000), parameters: {} },
        },
      ],
    });
    expect(res.status).toBe(413);
    expect(JSON.stringify(stack.sim.requests.map((r) => r.body))).not.toContain(tag);
  });

  it('the log line of a non-stream answer counts its bytes, not its UTF-16 units', async () => {
    const prompt = 'bytes of a json answer';
    const res = await post({
      model: 'deepseek-chat',
      messages: [{ role: 'user', content: prompt }],
    });
    expect(res.status).toBe(200);
    // The simulator's answers mix in CJK and emoji: bytes and characters differ.
    const text = simulateAnswer(prompt).text;
    expect(Buffer.byteLength(text)).toBeGreaterThan(text.length);
    expect(JSON.parse(res.body).choices[0].message.content).toBe(text);
    const id = res.headers['x-request-id'] as string;
    await new Promise((r) => setTimeout(r, 50)); // the line is written as the stream ends
    const line = stack.logs.find((l) => l.includes(id) && l.includes('stream finished'))!;
    expect(JSON.parse(line).bytesOut).toBe(Buffer.byteLength(res.body));
  });
});
