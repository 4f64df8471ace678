// /v1: the official openai package and the Vercel AI SDK, pointed at the proxy, just work.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { streamText, generateText } from 'ai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { createApp } from '../../src/app';
import { testConfig } from '../../src/config';
import { simulateAnswer } from '../../src/simulator/answer';
import { request, startStack, type Stack } from '../helpers/stack';

let stack: Stack;
let client: OpenAI;
beforeAll(async () => {
  stack = await startStack();
  client = new OpenAI({ apiKey: 'unused-by-the-proxy', baseURL: `${stack.url}/v1`, maxRetries: 0 });
});
afterAll(() => stack.close());

describe('the openai package', () => {
  it('streams text equal to the simulator answer, with reasoning, usage and fingerprint intact', async () => {
    const prompt = 'openai stream';
    const stream = await client.chat.completions.create({
      model: 'deepseek-v4-flash',
      messages: [{ role: 'user', content: prompt }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let reasoning = '';
    let usage: unknown;
    let fingerprint: string | undefined;
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta as
        { content?: string | null; reasoning_content?: string | null } | undefined;
      text += delta?.content ?? '';
      reasoning += delta?.reasoning_content ?? '';
      if (chunk.usage) usage = chunk.usage;
      fingerprint ??= chunk.system_fingerprint ?? undefined;
    }
    const answer = simulateAnswer(prompt, { thinking: true });
    expect(text).toBe(answer.text);
    expect(reasoning).toBe(answer.reasoningText);
    expect(usage).toMatchObject({
      completion_tokens: answer.content.length + answer.reasoning.length,
    });
    expect(fingerprint).toBe('fp_simulator');
  });

  it('non-stream answers one chat.completion', async () => {
    const prompt = 'openai json';
    const res = await client.chat.completions.create({
      model: 'deepseek-chat',
      messages: [{ role: 'user', content: prompt }],
    });
    expect(res.object).toBe('chat.completion');
    expect(res.choices[0]!.message.content).toBe(simulateAnswer(prompt).text);
    expect(res.choices[0]!.finish_reason).toBe('stop');
    expect(res.usage?.total_tokens).toBeGreaterThan(0);
    const sent = stack.sim.requests.find((r) => r.body.messages?.[0]?.content === prompt);
    expect(sent?.body).toMatchObject({
      model: 'deepseek-v4-flash',
      thinking: { type: 'disabled' },
    });
  });

  it('an upstream 402 surfaces as the SDK error type with our code', async () => {
    const err = await client.chat.completions
      .create({
        model: 'deepseek-v4-flash',
        messages: [{ role: 'user', content: 'pay up [[status=402]]' }],
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(502);
    expect((err as InstanceType<typeof OpenAI.APIError>).code).toBe(
      'upstream_insufficient_balance',
    );
  });

  it('a mid-stream failure is raised by the SDK, not taken as a finished answer', async () => {
    const stream = await client.chat.completions.create({
      model: 'deepseek-v4-flash',
      messages: [{ role: 'user', content: 'openai break [[reset=3 delay=2 times=9]]' }],
      stream: true,
      thinking: { type: 'disabled' },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    const consume = async () => {
      for await (const _ of stream) void _;
    };
    await expect(consume()).rejects.toBeInstanceOf(OpenAI.APIError);
  });

  it('lists the allowlist at /v1/models and rejects unknown models in the OpenAI shape', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(stack.config.allowedModels);
    const res = await request(`${stack.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(res.status).toBe(400);
    const body = JSON.parse(res.body);
    expect(body.error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_request' });
  });

  it('passes the upstream bytes through: every chunk line is the simulator chunk verbatim', async () => {
    const res = await request(`${stack.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'deepseek-v4-flash',
        messages: [{ role: 'user', content: 'verbatim [[frag=3]]' }],
        stream: true,
      }),
    });
    const lines = res.body.split('\n\n').filter(Boolean);
    expect(lines.at(-1)).toBe('data: [DONE]');
    const first = JSON.parse(lines[0]!.slice(6));
    expect(first).toMatchObject({
      object: 'chat.completion.chunk',
      system_fingerprint: 'fp_simulator',
    });
    expect(first.choices[0].delta).toEqual({
      role: 'assistant',
      content: null,
      reasoning_content: null,
    });
  });
});

describe('pass-through of mixed upstream framing', () => {
  // The byte path hands whole `data: ...` lines over as the upstream's bytes; everything else
  // (no space after the colon, a line split across writes, comments, a named event) takes the
  // text path. The output must keep every chunk, in order, whichever path it took.
  const head = '{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":';
  const tok = (t: string) =>
    `${head}{"content":${JSON.stringify(t)}},"logprobs":null,"finish_reason":null}]}`;
  const events = [
    `${head}{"role":"assistant","content":null},"logprobs":null,"finish_reason":null}]}`,
    tok('A'),
    tok('B'),
    tok('C ✓'),
    tok('D'),
    tok('E'),
    tok('F'),
    `${head}{"content":""},"logprobs":null,"finish_reason":"stop"}],"usage":{"total_tokens":6}}`,
  ];
  // The upstream's writes, as sent: [A B] whole, C without the space, D split inside its
  // multi-byte-free middle, a comment and an unnamed event with a type, E F whole, the finish.
  const writes = [
    `data: ${events[0]}\n\ndata: ${events[1]}\n\ndata: ${events[2]}\n\ndata:${events[3]}\n\n`,
    `data: ${events[4]!.slice(0, 40)}`,
    `${events[4]!.slice(40)}\n\n: keep-alive\n\nevent: message\ndata: ${events[5]}\n\n`,
    `data: ${events[6]}\n\ndata: ${events[7]}\n\ndata: [DONE]\n\n`,
  ];

  it('every chunk once, in order, with the usual `data: ` framing', async () => {
    const upstream = http.createServer((req, res) => {
      req.resume();
      req.on('end', async () => {
        res.writeHead(200, { 'Content-Type': 'text/event-stream' });
        for (const w of writes) {
          res.write(w);
          await new Promise((r) => setTimeout(r, 15));
        }
        res.end();
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const app = createApp(
      testConfig({
        deepseekBaseUrl: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
        deepseekApiKey: 'sk-test-passthrough-0001',
        useSimulator: false,
        rateLimitMax: 0,
        maxStreamsPerClient: 0,
        logLevel: 'silent',
      }),
    );
    const server = http.createServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const res = await request(
        `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`,
        {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model: 'deepseek-chat',
            messages: [{ role: 'user', content: 'x' }],
            stream: true,
          }),
        },
      );
      expect(res.status).toBe(200);
      expect(res.body).toBe(events.map((e) => `data: ${e}\n\n`).join('') + 'data: [DONE]\n\n');
    } finally {
      app.close();
      server.close();
      upstream.close();
    }
  });
});

describe('the Vercel AI SDK', () => {
  const provider = () =>
    createOpenAICompatible({
      name: 'deepseek-proxy',
      baseURL: `${stack.url}/v1`,
      apiKey: 'unused',
    });

  it('streamText streams the same text', async () => {
    const prompt = 'ai sdk stream';
    const result = streamText({ model: provider()('deepseek-v4-flash'), prompt });
    let text = '';
    for await (const part of result.textStream) text += part;
    expect(text).toBe(simulateAnswer(prompt).text);
  });

  it('generateText works too', async () => {
    const prompt = 'ai sdk generate';
    const { text } = await generateText({ model: provider()('deepseek-chat'), prompt });
    expect(text).toBe(simulateAnswer(prompt).text);
  });
});

describe('a /v1 stream waiting in a long upstream queue', () => {
  it('gets ": ping" comments, which the openai package skips', async () => {
    const quiet = await startStack({ heartbeatMs: 100 });
    try {
      const prompt = 'queued v1 [[stall-first=600]]';
      const body = JSON.stringify({
        model: 'deepseek-chat',
        stream: true,
        messages: [{ role: 'user', content: prompt }],
      });
      const raw = await request(`${quiet.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      expect(raw.body.split('\n\n').filter((b) => b === ': ping').length).toBeGreaterThanOrEqual(2);
      expect(raw.body.endsWith('data: [DONE]\n\n')).toBe(true);
      const sdk = new OpenAI({ apiKey: 'x', baseURL: `${quiet.url}/v1`, maxRetries: 0 });
      const stream = await sdk.chat.completions.create({
        model: 'deepseek-chat',
        messages: [{ role: 'user', content: prompt }],
        stream: true,
      });
      let text = '';
      for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
      expect(text).toBe(simulateAnswer(prompt).text);
    } finally {
      await quiet.close();
    }
  });
});
