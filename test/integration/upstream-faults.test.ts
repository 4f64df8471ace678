// Upstream behaviour the simulator does not script, from a fake DeepSeek written chunk by chunk:
// a token chunk whose envelope is broken, chunk shapes the non-stream /v1 answer cannot use, and
// an answer that finished (finish_reason) before the connection broke or went quiet, and an
// upstream that accepts the request and breaks before the first token.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseSse, q, request, sseText, startStack, type Stack } from '../helpers/stack';

const HEAD =
  '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"deepseek-chat",' +
  '"system_fingerprint":"fp","choices":[{"index":0,"delta":';
const line = (delta: string, finish = 'null', extra = '') =>
  `data: ${HEAD}${delta},"logprobs":null,"finish_reason":${finish}}]${extra}}\n\n`;
const token = (t: string) => line(`{"content":${JSON.stringify(t)}}`);
const ROLE = line('{"role":"assistant","content":""}');
const FINISH = line('{"content":""}', '"stop"', ',"usage":{"total_tokens":3}');

/**
 * What the fake sends for a prompt containing each key; `then` decides how the body ends, and
 * `failFirst` makes that many requests send the role chunk and reset first.
 */
const SCRIPTS: Record<
  string,
  {
    chunks: Array<string | Buffer>;
    then: 'done' | 'reset' | 'stall';
    failFirst?: number;
    /** The second request (the continuation) is refused with 503 and retry-after-ms: 300. */
    refuseSecond?: boolean;
    /** Wait this long between chunks: each is an upstream read of its own. */
    gapMs?: number;
    /** Every later request (a continuation) is answered with these chunks and [DONE]. */
    continueWith?: string[];
  }
> = {
  // A cut-off finish on a chunk that also carries a token: still a cut-off (continued upstream).
  'cut-off-with-text': {
    chunks: [
      ROLE,
      token('A'),
      line('{"content":"B"}', '"insufficient_system_resource"', ',"usage":{"total_tokens":2}'),
    ],
    then: 'done',
    continueWith: [token('C'), FINISH],
  },
  // An error object after the finish chunk: the answer was whole.
  'error-after-finish': {
    chunks: [ROLE, token('Done.'), FINISH, 'data: {"error":{"message":"late trouble"}}\n\n'],
    then: 'reset',
    continueWith: [token(' EXTRA'), FINISH],
  },
  'broken-envelope': {
    chunks: [
      ROLE,
      token('A'),
      token('hi').replace('"created":1,', '"created":1,BROKEN,'),
      token('B'),
      FINISH,
    ],
    then: 'done',
  },
  'tool-calls-not-array': {
    chunks: [ROLE, line('{"tool_calls":5}'), FINISH],
    then: 'done',
  },
  'finish-then-reset': { chunks: [ROLE, token('A'), token('B'), FINISH], then: 'reset' },
  'finish-then-stall': { chunks: [ROLE, token('A'), token('B'), FINISH], then: 'stall' },
  'tool-call-then-reset': {
    chunks: [
      ROLE,
      line(
        '{"tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":""}}]}',
      ),
    ],
    then: 'reset',
  },
  'answer-then-partial-tool-call-cut': {
    chunks: [
      ROLE,
      token('A'),
      line(
        '{"tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{\\"a\\":"}}]}',
      ),
    ],
    then: 'reset',
  },
  'two-tokens-then-reset': { chunks: [ROLE, token('A'), token('B')], then: 'reset' },
  'resume-refused': { chunks: [ROLE, token('A'), token('B')], then: 'reset', refuseSecond: true },
  // One event whose JSON is split over two `data:` lines (valid SSE: the lines join with LF).
  'multi-line': {
    chunks: [ROLE, token('A').replace('"choices":', '\ndata: "choices":'), token('B'), FINISH],
    then: 'done',
  },
  // An emoji escaped as a surrogate pair whose halves come in two events (and two reads).
  'split-surrogate': {
    chunks: [ROLE, line('{"content":"a\\ud83d"}'), line('{"content":"\\ude00b"}'), FINISH],
    then: 'done',
    gapMs: 30,
  },
  'null-choice-first': { chunks: [ROLE, 'data: {"choices":[null]}\n\n'], then: 'done' },
  'null-choice-later': {
    chunks: [ROLE, token('A'), 'data: {"choices":[{"index":0,"delta":7}]}\n\n', FINISH],
    then: 'done',
  },
  // A raw control character inside the token: not JSON, even with an envelope seen before.
  'raw-control': {
    chunks: [ROLE, token('A'), line('{"content":"x\u0001y"}'), token('B'), FINISH],
    then: 'done',
    gapMs: 10,
  },
  // Token chunks carrying logprobs (the request asked for them).
  logprobs: {
    chunks: [
      ROLE,
      line(
        '{"content":"Hel"},"logprobs":{"content":[{"token":"Hel","logprob":-0.1,"bytes":[72,101,108],"top_logprobs":[]}]}',
      ).replace(',"logprobs":null', ''),
      line(
        '{"content":"lo"},"logprobs":{"content":[{"token":"lo","logprob":-0.2,"bytes":[108,111],"top_logprobs":[]}]}',
      ).replace(',"logprobs":null', ''),
      FINISH,
    ],
    then: 'done',
  },
  'early-close-once': { chunks: [ROLE, token('A'), FINISH], then: 'done', failFirst: 1 },
  'early-close-always': { chunks: [ROLE, token('A'), FINISH], then: 'done', failFirst: 99 },
};
/** A token chunk with its literal as the upstream wrote it (escapes, or bytes that are not UTF-8). */
const literal = (raw: string | Buffer) =>
  Buffer.concat([
    Buffer.from(line('{"content":"@"}').split('@')[0]!),
    Buffer.from(raw),
    Buffer.from(line('{"content":"@"}').split('@')[1]!),
  ]);
SCRIPTS['escapes-as-sent'] = {
  chunks: [
    ROLE,
    literal('Caf\\u00e9'),
    literal(' \\"q\\"\\n'),
    literal('流式'),
    literal('\\ud83d\\ude80'),
    literal(Buffer.from([0x20, 0xff])), // a space and a byte that is not UTF-8
    FINISH,
  ],
  then: 'done',
};
const ESCAPES_READ = 'Café "q"\n流式🚀 \ufffd';
const served = new Map<string, number>();
const times: number[] = [];

let upstream: http.Server;
const paths: string[] = [];
let stack: Stack;

beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      paths.push(req.url ?? '');
      const key = Object.keys(SCRIPTS).find((k) => body.includes(k));
      const script = key === undefined ? undefined : SCRIPTS[key]!;
      if (!script) {
        res.writeHead(400).end();
        return;
      }
      const n = served.get(key!) ?? 0;
      served.set(key!, n + 1);
      times.push(Date.now());
      if (script.refuseSecond && n === 1) {
        res.writeHead(503, { 'Content-Type': 'application/json', 'retry-after-ms': '300' });
        res.end('{"error":{"message":"busy"}}');
        return;
      }
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      if (script.continueWith && n >= 1) {
        res.end(script.continueWith.join('') + 'data: [DONE]\n\n');
        return;
      }
      if (script.refuseSecond && n >= 2) {
        res.end(token('C') + FINISH + 'data: [DONE]\n\n');
        return;
      }
      if (n < (script.failFirst ?? 0)) {
        res.write(ROLE);
        setTimeout(() => res.socket?.destroy(), 20);
        return;
      }
      const rest = () => {
        if (script.then === 'done') res.end('data: [DONE]\n\n');
        else if (script.then === 'reset') setTimeout(() => res.socket?.destroy(), 20);
        // 'stall': the connection stays open and silent until the test ends.
      };
      const gap = script.gapMs;
      if (gap === undefined) {
        for (const c of script.chunks) res.write(c);
        rest();
        return;
      }
      const next = (i: number) => {
        if (i === script.chunks.length) return rest();
        res.write(script.chunks[i]);
        setTimeout(() => next(i + 1), gap);
      };
      next(0);
    });
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  stack = await startStack({
    deepseekBaseUrl: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
    idleTimeoutMs: 300,
    retryMax: 2,
  });
});
afterAll(async () => {
  await stack.close();
  upstream.closeAllConnections();
  await new Promise<void>((r) => upstream.close(() => r()));
});

/** POST /v1/chat/completions with one user message. */
const v1 = (content: string, stream = false) =>
  request(`${stack.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ stream, messages: [{ role: 'user', content }] }),
  });

describe('a token chunk with a broken envelope', () => {
  it('is an in-band upstream_protocol_error on SSE, and its token is not delivered', async () => {
    const res = await request(stack.url + q('broken-envelope', '&format=sse&thinking=false'));
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe('A');
    const last = events.at(-1)!;
    expect(last.event).toBe('error');
    expect(JSON.parse(last.data).code).toBe('upstream_protocol_error');
  });

  it('is a 502 for a non-stream /v1 request, and the proxy keeps serving', async () => {
    const res = await v1('broken-envelope');
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body).error.code).toBe('upstream_protocol_error');
    const again = await request(stack.url + q('finish-then-reset'));
    expect(again.body).toBe('AB');
  });

  it('a chunk shape the non-stream answer cannot use is a 502, not a crash', async () => {
    const res = await v1('tool-calls-not-array');
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body).error.code).toBe('upstream_protocol_error');
  });
});

describe('an emoji whose surrogate halves come in two events', () => {
  it('is one character in text mode, not two U+FFFD', async () => {
    const res = await request(stack.url + q('split-surrogate', '&format=text&thinking=false'));
    expect(res.status).toBe(200);
    expect(res.body).toBe('a\u{1F600}b');
  });

  it('is the same text over SSE', async () => {
    const res = await request(stack.url + q('split-surrogate', '&format=sse&thinking=false'));
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe('a\u{1F600}b');
    expect(events.at(-1)!.event).toBe('done');
  });
});

describe('token literals in any escape form, and bytes that are not UTF-8', () => {
  it('SSE: the client reads the tokens; escapes go out as sent; the body is UTF-8; a replay reads the same', async () => {
    const res = await request(stack.url + q('escapes-as-sent', '&format=sse&thinking=false'));
    expect(res.status).toBe(200);
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe(ESCAPES_READ);
    expect(events.at(-1)!.event).toBe('done');
    // Copied from the upstream's bytes, not serialised again.
    expect(res.body).toContain('data: {"content":"Caf\\u00e9"}');
    expect(res.body).toContain('data: {"content":"\\ud83d\\ude80"}');
    const bytes = Buffer.concat(res.chunks);
    expect(Buffer.from(bytes.toString('utf8'), 'utf8').equals(bytes)).toBe(true);

    const id = res.headers['x-request-id'] as string;
    const replay = await request(stack.url + q('escapes-as-sent', '&format=sse&thinking=false'), {
      headers: { 'Last-Event-ID': `${id}:0` },
    });
    expect(sseText(parseSse(replay.body).events)).toBe(ESCAPES_READ);
  });

  it('text: the decoded tokens', async () => {
    const res = await request(stack.url + q('escapes-as-sent', '&format=text&thinking=false'));
    expect(res.status).toBe(200);
    expect(res.body).toBe(ESCAPES_READ);
    expect(res.complete).toBe(true);
  });
});

describe('a chunk whose choice or delta is not an object', () => {
  it('before the first token: a 502 upstream_protocol_error, not a 500', async () => {
    const res = await request(stack.url + q('null-choice-first', '&format=sse&thinking=false'));
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body).error.code).toBe('upstream_protocol_error');
  });

  it('after it: an in-band upstream_protocol_error', async () => {
    const res = await request(stack.url + q('null-choice-later', '&format=sse&thinking=false'));
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe('A');
    expect(events.at(-1)!.event).toBe('error');
    expect(JSON.parse(events.at(-1)!.data).code).toBe('upstream_protocol_error');
  });
});

describe('a token with a raw control character (not JSON)', () => {
  it.each(['sse', 'text'])(
    '%s: is an upstream_protocol_error even after a well-formed chunk with the same envelope',
    async (format) => {
      const res = await request(stack.url + q('raw-control', `&format=${format}&thinking=false`));
      expect(res.body).not.toContain('x\u0001y');
      if (format === 'sse') {
        const { events } = parseSse(res.body);
        expect(sseText(events)).toBe('A');
        expect(JSON.parse(events.at(-1)!.data).code).toBe('upstream_protocol_error');
      } else {
        expect(res.body).toBe('A');
        expect(res.complete).toBe(false); // a cut text stream never looks complete
      }
    },
  );

  it('/v1: is not passed through as a chunk', async () => {
    const res = await v1('raw-control', true);
    expect(res.body).not.toContain('x\u0001y');
    expect(res.body).toContain('upstream_protocol_error');
  });
});

describe('/v1 non-stream with logprobs', () => {
  it('assembles the log probabilities of every chunk instead of dropping them', async () => {
    const res = await v1('logprobs');
    expect(res.status).toBe(200);
    const choice = JSON.parse(res.body).choices[0];
    expect(choice.message.content).toBe('Hello');
    expect(choice.logprobs.content.map((t: { token: string }) => t.token)).toEqual(['Hel', 'lo']);
    expect(choice.logprobs.content[1].logprob).toBe(-0.2);
  });
});

describe('an answer that finished before [DONE]', () => {
  it.each(['finish-then-reset', 'finish-then-stall'])(
    '%s: ends cleanly with the answer, no continuation request',
    async (prompt) => {
      const before = paths.length;
      const res = await request(stack.url + q(prompt, '&format=sse&thinking=false'));
      const { events } = parseSse(res.body);
      expect(sseText(events)).toBe('AB');
      expect(events.at(-1)!.event).toBe('done');
      expect(JSON.parse(events.at(-1)!.data).finish_reason).toBe('stop');
      expect(paths.slice(before)).toEqual(['/chat/completions']);
    },
  );
});

describe('an upstream that accepts the request and breaks before the first token', () => {
  it('is retried invisibly: /v1 sends the role chunk once', async () => {
    const res = await v1('early-close-once', true);
    expect(res.status).toBe(200);
    const roles = res.body.split('\n\n').filter((l) => l.includes('"role":"assistant"'));
    expect(roles).toHaveLength(1);
    expect(res.body.endsWith('data: [DONE]\n\n')).toBe(true);
  });

  it('with the retries spent, is a JSON 503 upstream_unavailable (text, SSE and /v1)', async () => {
    for (const res of [
      await request(stack.url + q('early-close-always')),
      await request(stack.url + q('early-close-always', '&format=sse')),
      await v1('early-close-always', true),
    ]) {
      expect(res.status).toBe(503);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(JSON.parse(res.body).error.code).toMatch(/upstream_unavailable/);
    }
  });
});

describe('tool calls', () => {
  it('a tool-call chunk begins the answer: it goes out, and a break after it is not retried', async () => {
    const before = paths.length;
    const res = await v1('tool-call-then-reset', true);
    expect(res.status).toBe(200);
    const events = res.body.split('\n\n').filter((l) => l.startsWith('data: '));
    expect(events.filter((l) => l.includes('"tool_calls"'))).toHaveLength(1);
    expect(events.at(-1)).toMatch(/"error"/); // in-band: the OpenAI SDKs raise it
    expect(paths.length - before).toBe(1);
  });
});

describe('a break after a tool call began', () => {
  it('is not continued upstream (the new call would merge into the half-sent one)', async () => {
    const before = paths.length;
    const res = await v1('answer-then-partial-tool-call-cut', true);
    expect(res.status).toBe(200);
    const events = res.body.split('\n\n').filter((l) => l.startsWith('data: '));
    expect(events.filter((l) => l.includes('"tool_calls"'))).toHaveLength(1);
    expect(events.at(-1)).toMatch(/"error"/);
    expect(paths.slice(before)).toEqual(['/chat/completions']);
  });
});

describe('a break with the client max_tokens spent', () => {
  it('is not continued upstream: there is nothing left to ask for', async () => {
    const before = paths.length;
    const res = await request(`${stack.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        stream: true,
        max_tokens: 2,
        messages: [{ role: 'user', content: 'two-tokens-then-reset' }],
      }),
    });
    const events = res.body.split('\n\n').filter((l) => l.startsWith('data: '));
    expect(events.filter((l) => /"content":"[^"]/.test(l))).toHaveLength(2);
    expect(paths.slice(before)).toEqual(['/chat/completions']);
  });
});

describe('a continuation the upstream refuses', () => {
  it('waits as a retry would (Retry-After honoured), then continues the answer', async () => {
    const before = paths.length;
    const res = await request(stack.url + q('resume-refused', '&format=sse&thinking=false'));
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe('ABC');
    expect(events.at(-1)!.event).toBe('done');
    expect(paths.slice(before)).toEqual([
      '/chat/completions',
      '/beta/chat/completions',
      '/beta/chat/completions',
    ]);
    const [, refused, continued] = times.slice(-3);
    expect(continued! - refused!).toBeGreaterThanOrEqual(250); // retry-after-ms: 300
  });
});

describe('/v1 stream pass-through', () => {
  it('an event split over several data: lines goes out as valid SSE', async () => {
    const res = await v1('multi-line', true);
    expect(res.status).toBe(200);
    const events = res.body.split('\n\n').filter((e) => e !== '');
    const contents: string[] = [];
    for (const e of events) {
      const lines = e.split('\n');
      expect(lines.every((l) => l.startsWith('data: '))).toBe(true);
      const data = lines.map((l) => l.slice(6)).join('\n');
      if (data === '[DONE]') continue;
      const c = JSON.parse(data).choices[0]?.delta?.content;
      if (c) contents.push(c);
    }
    expect(contents.join('')).toBe('AB');
  });
});

describe('the end of an answer, as the upstream marks it', () => {
  it('a cut-off finish on a chunk that carries a token is continued, not taken for the end', async () => {
    const before = paths.length;
    const res = await request(stack.url + q('cut-off-with-text', '&format=sse&thinking=false'));
    const { events } = parseSse(res.body);
    expect(sseText(events)).toBe('ABC');
    expect(JSON.parse(events.at(-1)!.data).finish_reason).toBe('stop');
    expect(paths.slice(before)).toEqual(['/chat/completions', '/beta/chat/completions']);
  });

  it('an error after the finish chunk does not continue the finished answer', async () => {
    const before = paths.length;
    const res = await v1('error-after-finish', true);
    const content = res.body
      .split('\n\n')
      .filter((l) => l.startsWith('data: {'))
      .map((l) => JSON.parse(l.slice(6)) as { choices?: Array<{ delta?: { content?: string } }> })
      .map((c) => c.choices?.[0]?.delta?.content ?? '')
      .join('');
    expect(content).toBe('Done.');
    expect(res.body.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(paths.slice(before)).toEqual(['/chat/completions']);
  });
});
