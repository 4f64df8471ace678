// Fuzzed request surface: random query strings, JSON bodies and headers never crash the server,
// never leave a rejection unhandled, and always answer a valid status with a valid body.

import fc from 'fast-check';
import { request, startStack, type RawResponse, type Stack } from '../helpers/stack';

let stack: Stack;
const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => unhandled.push(e);
beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  stack = await startStack({ maxPromptChars: 2000, maxBodyBytes: 8192 });
});
afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await stack.close();
});

const ALLOWED = new Set([200, 204, 400, 404, 405, 409, 410, 413, 415]);

function checkAnswer(res: RawResponse): void {
  expect(ALLOWED.has(res.status)).toBe(true);
  if (res.status === 200) {
    expect(res.complete).toBe(true);
    return;
  }
  // Node's HTTP parser itself refused the request (it never reached the app): a bare 400.
  if (res.status === 400 && res.body === '' && res.headers.connection === 'close') return;
  const body = JSON.parse(res.body) as { error: { code: string; message: string } };
  expect(typeof body.error.code).toBe('string');
  expect(typeof body.error.message).toBe('string');
}

const key = fc.constantFrom(
  'prompt',
  'model',
  'thinking',
  'format',
  'temperature',
  'max_tokens',
  'include_reasoning',
  'system',
  'reasoning_effort',
  'x',
);
const value = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.constantFrom('sse', 'text', 'true', 'false', '0.5', '3', '-1', 'deepseek-chat', 'high', ''),
);

describe('fuzzed requests', () => {
  it('random query strings', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(key, value), { maxLength: 6 }), async (pairs) => {
        const qs = pairs
          .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
          .join('&');
        checkAnswer(await request(`${stack.url}/chat-stream?${qs}`));
      }),
      { numRuns: 400 },
    );
  }, 60_000);

  it('random JSON bodies', async () => {
    const body = fc.oneof(
      fc.json({ maxDepth: 3 }),
      fc
        .dictionary(key, fc.oneof(value, fc.integer(), fc.boolean(), fc.constant(null)), {
          maxKeys: 5,
        })
        .map((o) => JSON.stringify(o)),
      fc
        .record({
          messages: fc.array(
            fc.record({
              role: fc.constantFrom('user', 'system', 'x'),
              content: fc.oneof(fc.string(), fc.integer()),
            }),
            { maxLength: 3 },
          ),
        })
        .map((o) => JSON.stringify(o)),
      fc.string({ maxLength: 50 }),
    );
    await fc.assert(
      fc.asyncProperty(body, async (text) => {
        checkAnswer(
          await request(`${stack.url}/chat-stream`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: text,
          }),
        );
      }),
      { numRuns: 400 },
    );
  }, 60_000);

  it('random headers and methods', async () => {
    const headerValue = fc.stringMatching(/^[\x20-\x7e]{0,40}$/);
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'),
        fc.record({
          'content-type': headerValue,
          accept: headerValue,
          'x-request-id': headerValue,
          'last-event-id': headerValue,
        }),
        fc.string({ maxLength: 40 }),
        async (method, headers, body) => {
          const res = await request(`${stack.url}/chat-stream?prompt=fuzz`, {
            method,
            headers: headers as Record<string, string>,
            body: method === 'GET' ? undefined : body,
          });
          expect(res.status).toBeGreaterThanOrEqual(200);
          if (method === 'OPTIONS' || method === 'GET') return;
          checkAnswer(res);
        },
      ),
      { numRuns: 300 },
    );
  }, 60_000);

  it('left no unhandled rejection, no stuck stream, and the server still answers', async () => {
    expect(unhandled).toEqual([]);
    expect(stack.app.service.active.size).toBe(0);
    const res = await request(`${stack.url}/healthz`);
    expect(res.status).toBe(200);
  });
});
