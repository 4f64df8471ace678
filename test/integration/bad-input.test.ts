// Every error checkable before streaming answers the SPEC's status and JSON shape, and the
// server keeps serving normally afterwards.

import net from 'node:net';
import { simulateAnswer } from '../../src/simulator/answer';
import { q, request, startStack, type Stack } from '../helpers/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ maxBodyBytes: 2048, maxPromptChars: 500 });
});
afterAll(() => stack.close());

const post = (body: string, contentType = 'application/json') =>
  request(stack.url + '/chat-stream', {
    method: 'POST',
    headers: { 'content-type': contentType },
    body,
  });

function expectError(
  res: { status: number; body: string; headers: Record<string, unknown> },
  status: number,
  code: string,
) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  const body = JSON.parse(res.body);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.message.length).toBeGreaterThan(0);
  expect(body.error.requestId).toBe(res.headers['x-request-id']);
  expect(res.body).not.toMatch(/at .*\.ts:\d+/); // no stack traces
}

describe('bad input before streaming', () => {
  const cases: Array<[string, () => ReturnType<typeof request>, number, string]> = [
    ['a missing prompt', () => request(stack.url + '/chat-stream'), 400, 'invalid_request'],
    ['an empty prompt', () => request(stack.url + q('')), 400, 'invalid_request'],
    ['a whitespace prompt', () => request(stack.url + q(' \t\n ')), 400, 'invalid_request'],
    [
      'a repeated prompt parameter',
      () => request(stack.url + '/chat-stream?prompt=a&prompt=b'),
      400,
      'invalid_request',
    ],
    ['a prompt that is a number', () => post('{"prompt":42}'), 400, 'invalid_request'],
    ['a prompt that is null', () => post('{"prompt":null}'), 400, 'invalid_request'],
    ['messages that are not an array', () => post('{"messages":"hi"}'), 400, 'invalid_request'],
    [
      'a message without a role',
      () => post('{"messages":[{"content":"hi"}]}'),
      400,
      'invalid_request',
    ],
    ['a body that is a JSON array', () => post('[1,2]'), 400, 'invalid_request'],
    ['bad JSON', () => post('{"prompt":'), 400, 'invalid_request'],
    [
      'a non-JSON POST',
      () => post('prompt=hi', 'application/x-www-form-urlencoded'),
      415,
      'unsupported_media_type',
    ],
    [
      'a POST without content type',
      () => request(stack.url + '/chat-stream', { method: 'POST', body: 'x' }),
      415,
      'unsupported_media_type',
    ],
    [
      'an oversized body',
      () => post(JSON.stringify({ prompt: 'x'.repeat(4000) })),
      413,
      'payload_too_large',
    ],
    [
      'an oversized prompt',
      () => request(stack.url + q('y'.repeat(501))),
      413,
      'payload_too_large',
    ],
    [
      'an unknown model',
      () => request(stack.url + q('hi', '&model=gpt-4')),
      400,
      'invalid_request',
    ],
    [
      'a bad temperature',
      () => request(stack.url + q('hi', '&temperature=hot')),
      400,
      'invalid_request',
    ],
    [
      'a bad max_tokens',
      () => request(stack.url + q('hi', '&max_tokens=1.5')),
      400,
      'invalid_request',
    ],
    [
      'a hexadecimal temperature in the query',
      () => request(stack.url + q('hi', '&temperature=0x1')),
      400,
      'invalid_request',
    ],
    [
      'a binary max_tokens in the query',
      () => request(stack.url + q('hi', '&max_tokens=0b11')),
      400,
      'invalid_request',
    ],
    [
      'a number given as a string in JSON',
      () => post(JSON.stringify({ prompt: 'hi', max_tokens: '10' })),
      400,
      'invalid_request',
    ],
    [
      'a prompt of zero-width spaces only',
      () => request(stack.url + q('\u200b\u200b')),
      400,
      'invalid_request',
    ],
    [
      'a bad thinking flag',
      () => request(stack.url + q('hi', '&thinking=maybe')),
      400,
      'invalid_request',
    ],
    ['a bad format', () => request(stack.url + q('hi', '&format=xml')), 400, 'invalid_request'],
    ['an unknown route', () => request(stack.url + '/nope'), 404, 'not_found'],
    [
      'a wrong method',
      () => request(stack.url + '/chat-stream', { method: 'PUT' }),
      405,
      'method_not_allowed',
    ],
    ...['/healthz', '/readyz', '/metrics', '/'].map(
      (path): [string, () => ReturnType<typeof request>, number, string] => [
        `POST ${path}`,
        () => request(stack.url + path, { method: 'POST' }),
        405,
        'method_not_allowed',
      ],
    ),
  ];
  for (const [name, send, status, code] of cases) {
    it(`${name} answers ${status} ${code}`, async () => {
      expectError(await send(), status, code);
    });
  }

  it('names the allowed methods on 405', async () => {
    const res = await request(stack.url + '/chat-stream', { method: 'DELETE' });
    expect(res.headers.allow).toBe('GET, HEAD, POST'); // HEAD runs a GET's checks
  });

  it('a GET prompt too long for a URL is 413 payload_too_large, pointing to POST', async () => {
    const res = await request(stack.url + q('x'.repeat(20_000)));
    expect(res.status).toBe(413);
    const body = JSON.parse(res.body);
    expect(body.error.code).toBe('payload_too_large');
    expect(body.error.message).toMatch(/POST/);
    expect(body.error.requestId).toBe(res.headers['x-request-id']);
  });

  it('HEAD /chat-stream answers the head a GET would get, and starts no generation', async () => {
    const prompt = 'head only';
    const res = await request(stack.url + q(prompt, '&format=sse'), { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(res.headers['cache-control']).toBe('no-cache, no-transform');
    expect(res.headers['x-request-id']).toBeTruthy();
    const text = await request(stack.url + q(prompt), { method: 'HEAD' });
    expect(text.headers['content-type']).toBe('text/plain; charset=utf-8');
    const bad = await request(stack.url + q(prompt, '&format=xml'), { method: 'HEAD' });
    expect(bad.status).toBe(400);
    await new Promise((r) => setTimeout(r, 50));
    expect(stack.sim.requests.some((r) => r.body.messages?.[0]?.content === prompt)).toBe(false);
  });

  it('an empty system field sends no system message; decimal query numbers still work', async () => {
    const prompt = 'blank system field';
    const res = await request(stack.url + q(prompt, '&system=&temperature=0.5&max_tokens=1e3'));
    expect(res.status).toBe(200);
    const sent = stack.sim.requests.find((r) => r.body.messages?.at(-1)?.content === prompt);
    expect(sent?.body.messages?.map((m) => m.role)).toEqual(['user']);
    expect((sent?.body as { temperature?: number } | undefined)?.temperature).toBe(0.5);
    expect(sent?.body.max_tokens).toBe(1000);
  });

  it('still streams a normal request after all of that', async () => {
    const res = await request(stack.url + q('after the errors'));
    expect(res.status).toBe(200);
    expect(res.body).toBe(simulateAnswer('after the errors').text);
  });
});

describe('upstream errors before the first byte', () => {
  const cases: Array<[string, number, string]> = [
    ['status=401', 502, 'upstream_auth_failed'],
    ['status=402', 502, 'upstream_insufficient_balance'],
    ['status=400', 400, 'invalid_request'],
    ['status=422', 400, 'invalid_request'],
    ['status=404', 502, 'upstream_error'],
  ];
  for (const [directive, status, code] of cases) {
    it(`upstream ${directive} answers ${status} ${code}, with no retry`, async () => {
      const prompt = `upstream error [[${directive}]]`;
      const before = stack.sim.requests.length;
      const res = await request(stack.url + q(prompt));
      expectError(res, status, code);
      expect(stack.sim.requests.length - before).toBe(1);
    });
  }

  it('passes the upstream 422 message on, sanitised', async () => {
    const res = await request(stack.url + q('u422 [[status=422]]'));
    expect(JSON.parse(res.body).error.message).toContain('Invalid Parameters');
  });

  it('never passes an HTML error page through', async () => {
    const res = await request(stack.url + q('html page [[status=503 html times=9]]'));
    expectError(res, 503, 'upstream_unavailable');
    expect(res.body).not.toContain('<');
    expect(res.headers['retry-after']).toBeDefined();
  });

  it('an HTML page with status 200 is a protocol error, not an answer', async () => {
    const res = await request(stack.url + q('captive [[html200 times=9]]'));
    expectError(res, 502, 'upstream_protocol_error');
  });
});

describe('bytes the HTTP parser cannot read', () => {
  /** Send raw bytes on a fresh connection; what the server sends back until it closes. */
  const raw = (bytes: string) =>
    new Promise<string>((resolve, reject) => {
      const { port } = new URL(stack.url);
      const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(bytes));
      let got = '';
      socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
      socket.on('close', () => resolve(got));
      socket.on('error', reject);
    });
  const responses = (text: string) => text.match(/HTTP\/1\.1 \d{3}/g) ?? [];

  it('alone: one JSON 400', async () => {
    const got = await raw('NOT HTTP AT ALL\r\n\r\n');
    expect(responses(got)).toEqual(['HTTP/1.1 400']);
    expect(got).toContain('"invalid_request"');
  });

  it('on a reused keep-alive connection, after an answer: its own JSON answer', async () => {
    const long = 'x'.repeat(20_000); // over Node's 16 KiB for the request line and headers
    const got = await raw(
      'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n' +
        `GET /chat-stream?prompt=${long} HTTP/1.1\r\nHost: x\r\n\r\n`,
    );
    expect(responses(got)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 413']);
    expect(got).toContain('"payload_too_large"');
  });

  it('after an answered request (an unframed DELETE body): that answer only, then close', async () => {
    const got = await raw(
      'DELETE /chat-stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n this is not a request',
    );
    // A second response after `Connection: close` is what Node's client calls a parse error.
    expect(responses(got)).toEqual(['HTTP/1.1 405']);
    expect(got).toContain('"method_not_allowed"');
  });
});
