// Fairness and access: rate limits, the per-client stream cap, client keys, HMAC signatures,
// CORS, security headers, and /metrics.

import { createHash, createHmac } from 'node:crypto';
import { sign, signingPayload } from '../../src/middleware/auth';
import { simulateAnswer } from '../../src/simulator/answer';
import { parseSse, q, request, startStack, waitFor, type Stack } from '../helpers/stack';

describe('request rate limit', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ rateLimitMax: 5, rateLimitWindowMs: 2000 });
  });
  afterAll(() => stack.close());

  it('a burst over the limit gets 429 rate_limited with RateLimit headers and Retry-After', async () => {
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => request(stack.url + q(`burst ${i}`))),
    );
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 200)).toHaveLength(5);
    expect(statuses.filter((s) => s === 429)).toHaveLength(3);
    const limited = results.find((r) => r.status === 429)!;
    expect(JSON.parse(limited.body).error.code).toBe('rate_limited');
    expect(Number(limited.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(limited.headers['ratelimit-policy']).toBeDefined();
    expect(limited.headers.ratelimit).toMatch(/r=0/);
    const ok = results.find((r) => r.status === 200)!;
    expect(ok.headers.ratelimit).toBeDefined();
  });

  it('health checks and the demo page are never limited', async () => {
    for (let i = 0; i < 10; i++) expect((await request(stack.url + '/healthz')).status).toBe(200);
  });
});

describe('a client under the limit', () => {
  it('never sees a 429', async () => {
    const stack = await startStack({ rateLimitMax: 10, rateLimitWindowMs: 1000 });
    try {
      for (let i = 0; i < 12; i++) {
        const res = await request(stack.url + q(`steady ${i}`));
        expect(res.status).toBe(200);
        await new Promise((r) => setTimeout(r, 120)); // ~8 per second
      }
    } finally {
      await stack.close();
    }
  });
});

describe('per-client stream cap', () => {
  it('refuses a client its (max+1)th concurrent stream with 429, and frees the slot after', async () => {
    const stack = await startStack({ maxStreamsPerClient: 2 });
    try {
      const open = [1, 2].map((i) =>
        request(stack.url + q(`cap ${i} [[tokens=30 delay=15]]`, '&thinking=false')),
      );
      await waitFor(() => stack.app.service.active.size === 2);
      const third = await request(stack.url + q('cap 3'));
      expect(third.status).toBe(429);
      expect(JSON.parse(third.body).error.code).toBe('rate_limited');
      await Promise.all(open);
      expect((await request(stack.url + q('cap 4'))).status).toBe(200);
    } finally {
      await stack.close();
    }
  });
});

describe('per-client stream cap and the resume grace', () => {
  it('a stream the client left keeps its slot while it generates for the grace', async () => {
    const stack = await startStack({ maxStreamsPerClient: 1, resumeGraceMs: 400 });
    try {
      const prompt = 'left behind [[tokens=400 delay=10]]';
      await request(stack.url + q(prompt, '&thinking=false'), {
        onChunk: (_c, soFar) => (soFar.length > 10 ? 'abort' : undefined),
      });
      // Gone, but its stream goes on into the journal: no second stream for this client yet.
      const during = await request(stack.url + q('meanwhile'));
      expect(during.status).toBe(429);
      await waitFor(() => stack.app.service.active.size === 0, 3000, 'the grace to end');
      expect((await request(stack.url + q('afterwards'))).status).toBe(200);
    } finally {
      await stack.close();
    }
  });
});

describe('per-client stream cap and batches', () => {
  it("a batch runs at once only as many prompts as the client's stream cap leaves room for", async () => {
    const stack = await startStack({ maxStreamsPerClient: 2 });
    try {
      let most = 0;
      const sampler = setInterval(() => {
        most = Math.max(most, stack.app.service.active.size);
      }, 2);
      const prompts = [0, 1, 2].map((i) => `slot ${i} [[tokens=15 delay=10]]`);
      const res = await request(stack.url + '/chat-stream/batch', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompts }),
      });
      clearInterval(sampler);
      // A cap of 2 used to refuse a batch of 3 (429, and retrying could never help).
      expect(res.status).toBe(200);
      expect(most).toBe(2);
      const { events } = parseSse(res.body);
      for (let i = 0; i < 3; i++) {
        const mine = events.filter((e) => JSON.parse(e.data).index === i);
        expect(mine.at(-1)?.event).toBe('done');
        const answer = mine.filter((e) => e.event === 'message');
        expect(answer.map((e) => JSON.parse(e.data).content).join('')).toBe(
          simulateAnswer(prompts[i]!).text,
        );
      }
      expect(res.body.endsWith('event: end\ndata: {}\n\n')).toBe(true);
      // Both slots came back: a batch of two runs at once, and a single stream is let in again.
      expect((await request(stack.url + q('after the batch'))).status).toBe(200);
    } finally {
      await stack.close();
    }
  });

  it('a batch is refused when the client has no slot left at all', async () => {
    const stack = await startStack({ maxStreamsPerClient: 1 });
    try {
      let started = false;
      const open = request(stack.url + q('holds the slot [[tokens=30 delay=20]]'), {
        onChunk: () => void (started = true),
      });
      await waitFor(() => started, 5000, 'stream open');
      const res = await request(stack.url + '/chat-stream/batch', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompts: ['no room'] }),
      });
      expect(res.status).toBe(429);
      expect(JSON.parse(res.body).error.code).toBe('rate_limited');
      await open;
    } finally {
      await stack.close();
    }
  });
});

describe('client keys', () => {
  const plain = 'client-key-plain-123';
  const hashed = 'client-key-hashed-456';
  let stack: Stack;
  beforeAll(async () => {
    const digest = createHash('sha256').update(hashed).digest('hex');
    stack = await startStack({ proxyApiKeys: [plain, `sha256:${digest}`] });
  });
  afterAll(() => stack.close());

  it('missing key: 401 unauthorized', async () => {
    const res = await request(stack.url + q('no key'));
    expect(res.status).toBe(401);
    expect(JSON.parse(res.body).error.code).toBe('unauthorized');
    expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
  });

  it('wrong key: 401, and nothing reaches the upstream', async () => {
    const res = await request(stack.url + q('wrong key'), {
      headers: { authorization: 'Bearer nope' },
    });
    expect(res.status).toBe(401);
    expect(stack.sim.requests.some((r) => r.body.messages?.[0]?.content === 'wrong key')).toBe(
      false,
    );
  });

  it('right keys, plain or given as a hash, stream', async () => {
    for (const key of [plain, hashed]) {
      const res = await request(stack.url + q(`right key ${key}`), {
        headers: { authorization: `Bearer ${key}` },
      });
      expect(res.status).toBe(200);
      expect(res.body).toBe(simulateAnswer(`right key ${key}`).text);
    }
  });

  it('/v1 needs the key too, and answers in the OpenAI error shape', async () => {
    const res = await request(stack.url + '/v1/models');
    expect(res.status).toBe(401);
    expect(JSON.parse(res.body).error.type).toBe('authentication_error');
  });
});

describe('HMAC signatures', () => {
  const secret = 'sign-me-secret';
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ signingSecret: secret });
  });
  afterAll(() => stack.close());

  const post = (body: string, ts: number, signature?: string) => {
    const path = '/chat-stream?format=text';
    const sig = signature ?? sign(secret, signingPayload(String(ts), 'POST', path, body));
    return request(stack.url + path, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-timestamp': String(ts),
        'x-signature': sig,
      },
      body,
    });
  };
  const now = () => Math.floor(Date.now() / 1000);

  it('a good signature streams', async () => {
    const body = JSON.stringify({ prompt: 'signed good' });
    const res = await post(body, now());
    expect(res.status).toBe(200);
    expect(res.body).toBe(simulateAnswer('signed good').text);
  });

  it('a bad signature, a tampered body and a missing one are 403 bad_signature', async () => {
    const body = JSON.stringify({ prompt: 'signed bad' });
    expect((await post(body, now(), 'sha256=' + '0'.repeat(64))).status).toBe(403);
    const ts = now();
    const sig = sign(secret, signingPayload(String(ts), 'POST', '/chat-stream?format=text', body));
    const tampered = await post(JSON.stringify({ prompt: 'signed evil' }), ts, sig);
    expect(tampered.status).toBe(403);
    expect(JSON.parse(tampered.body).error.code).toBe('bad_signature');
    const missing = await request(stack.url + q('unsigned'));
    expect(missing.status).toBe(403);
  });

  it('the signature covers the body bytes as sent, even when they are not valid UTF-8', async () => {
    const path = '/chat-stream?format=text';
    const body = Buffer.concat([
      Buffer.from('{"prompt":"signed bytes '),
      Buffer.from([0xff, 0xfe]), // not UTF-8: a decode would turn them into U+FFFD
      Buffer.from('"}'),
    ]);
    const ts = String(now());
    const hmac = createHmac('sha256', secret).update(signingPayload(ts, 'POST', path, ''));
    const sig = `sha256=${hmac.update(body).digest('hex')}`;
    const res = await request(stack.url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-timestamp': ts, 'x-signature': sig },
      body,
    });
    expect(res.status).toBe(200);
    expect(res.body).toBe(simulateAnswer('signed bytes \ufffd\ufffd').text);
  });

  it('a stale timestamp (outside 300 s) is refused', async () => {
    const res = await post(JSON.stringify({ prompt: 'signed stale' }), now() - 301);
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body).error.message).toMatch(/window/);
  });

  it('a replayed signature is refused', async () => {
    const body = JSON.stringify({ prompt: 'signed once' });
    const ts = now();
    const sig = sign(secret, signingPayload(String(ts), 'POST', '/chat-stream?format=text', body));
    expect((await post(body, ts, sig)).status).toBe(200);
    const again = await post(body, ts, sig);
    expect(again.status).toBe(403);
    expect(JSON.parse(again.body).error.message).toMatch(/already used/);
  });
});

describe('CORS allowlist', () => {
  it('allows listed origins, with the headers resume needs, and ignores others', async () => {
    const stack = await startStack({ corsOrigins: ['https://app.example'] });
    try {
      const pre = await request(stack.url + '/chat-stream', {
        method: 'OPTIONS',
        headers: { origin: 'https://app.example', 'access-control-request-method': 'GET' },
      });
      expect(pre.status).toBe(204);
      expect(pre.headers['access-control-allow-origin']).toBe('https://app.example');
      expect(pre.headers['access-control-allow-headers']).toMatch(/Last-Event-ID/);
      const other = await request(stack.url + q('cors other'), {
        headers: { origin: 'https://evil.example' },
      });
      expect(other.headers['access-control-allow-origin']).toBeUndefined();
    } finally {
      await stack.close();
    }
  });
});

describe('security headers', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(() => stack.close());

  it('API responses (streams and errors) get the API set; the demo page the full set', async () => {
    const stream = await request(stack.url + q('headers', '&format=sse'));
    const error = await request(stack.url + '/chat-stream');
    for (const res of [stream, error]) {
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(res.headers['strict-transport-security']).toMatch(/max-age=\d+/);
      expect(res.headers['x-frame-options']).toBe('SAMEORIGIN');
      expect(res.headers['referrer-policy']).toBe('no-referrer');
      expect(res.headers['cross-origin-resource-policy']).toBe('same-origin');
      expect(res.headers['content-security-policy']).toBe(
        "default-src 'none';frame-ancestors 'none'",
      );
      expect(res.headers['cross-origin-opener-policy']).toBeUndefined();
      expect(res.headers['x-xss-protection']).toBeUndefined();
    }
    expect(stream.status).toBe(200);
    expect(error.status).toBe(400);
    const page = await request(stack.url + '/');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/text\/html/);
    expect(page.headers['content-security-policy']).toMatch(/script-src 'self'/);
    expect(page.headers['cross-origin-opener-policy']).toBe('same-origin');
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    expect(page.headers['x-xss-protection']).toBe('0');
  });
});

describe('/metrics', () => {
  it('parses as Prometheus text and its counters move with a request and a stream', async () => {
    const stack = await startStack();
    try {
      const value = (text: string, name: string, labels = '') => {
        const line = text
          .split('\n')
          .find((l) => l.startsWith(name + (labels ? `{${labels}` : '')) && !l.startsWith('#'));
        return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
      };
      const before = (await request(stack.url + '/metrics')).body;
      await request(stack.url + q('metered', '&format=sse'));
      await request(stack.url + q('metered retry [[status=503]]'));
      await waitFor(() => stack.app.service.active.size === 0);
      const res = await request(stack.url + '/metrics');
      expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
      // Every non-comment line is `name{labels} value`. A histogram with no samples yet (the
      // event-loop lag, early in a run) reads `Nan` from prom-client: Prometheus parses floats
      // case-insensitively, so that is valid.
      for (const line of res.body.split('\n')) {
        if (line === '' || line.startsWith('#')) continue;
        expect(line).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/i);
      }
      const after = res.body;
      expect(value(after, 'dsp_tokens_total')).toBeGreaterThan(value(before, 'dsp_tokens_total'));
      expect(value(after, 'dsp_upstream_retries_total')).toBe(
        value(before, 'dsp_upstream_retries_total') + 1,
      );
      expect(value(after, 'dsp_time_to_first_token_seconds_count')).toBe(2);
      expect(
        value(after, 'dsp_http_requests_total', 'route="/chat-stream",method="GET",status="200"'),
      ).toBe(2);
      expect(after).toMatch(/dsp_active_streams 0/);
      expect(after).toMatch(/process_cpu_user_seconds_total/);
    } finally {
      await stack.close();
    }
  });
});
