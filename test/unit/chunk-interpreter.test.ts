// The interpreter: DeepSeek chunk shapes -> deltas.

import fc from 'fast-check';
import { ByteScan, interpret, interpretBytes, type DeltaSink } from '../../src/stream/interpreter';

function run(...data: string[]) {
  const calls: Array<[string, ...unknown[]]> = [];
  const sink: DeltaSink = {
    chunk: (d) => calls.push(['chunk', d]),
    content: (t) => calls.push(['content', t]),
    reasoning: (t) => calls.push(['reasoning', t]),
    finish: (r, u) => calls.push(['finish', r, u]),
    usage: (u) => calls.push(['usage', u]),
    done: () => calls.push(['done']),
    invalid: (m) => calls.push(['invalid', m]),
    upstreamError: (m) => calls.push(['upstreamError', m]),
  };
  for (const d of data) interpret(d, sink);
  return calls.filter((c) => c[0] !== 'chunk');
}

describe('interpret', () => {
  it('the role chunk carries no token', () => {
    expect(run('{"choices":[{"delta":{"role":"assistant","content":""}}]}')).toEqual([]);
  });
  it('content and reasoning with content null', () => {
    expect(
      run(
        '{"choices":[{"delta":{"content":null,"reasoning_content":"hmm"}}]}',
        '{"choices":[{"delta":{"content":"Hi"}}]}',
      ),
    ).toEqual([
      ['reasoning', 'hmm'],
      ['content', 'Hi'],
    ]);
  });
  it('usage on the finish chunk, and in a choices:[] chunk', () => {
    expect(
      run(
        '{"choices":[{"delta":{"content":""},"finish_reason":"stop"}],"usage":{"total_tokens":5}}',
      ),
    ).toEqual([['finish', 'stop', { total_tokens: 5 }]]);
    expect(run('{"choices":[],"usage":{"total_tokens":7}}')).toEqual([
      ['usage', { total_tokens: 7 }],
    ]);
  });
  it('content and finish in one chunk come in order', () => {
    expect(run('{"choices":[{"delta":{"content":"end"},"finish_reason":"length"}]}')).toEqual([
      ['content', 'end'],
      ['finish', 'length', undefined],
    ]);
  });
  it('a cut-off finish that carries text is still a cut-off, with its usage', () => {
    // The pass-through copy drops the finish and the usage: the deltas must still carry them.
    expect(
      run(
        '{"choices":[{"delta":{"content":"B"},"finish_reason":"insufficient_system_resource"}],' +
          '"usage":{"total_tokens":9}}',
      ),
    ).toEqual([
      ['content', 'B'],
      ['finish', 'insufficient_system_resource', { total_tokens: 9 }],
    ]);
  });
  it('[DONE] ends the stream', () => {
    expect(run('[DONE]')).toEqual([['done']]);
  });
  it('malformed JSON and non-objects are protocol errors with a short description', () => {
    const calls = run('{"choices":[', '42', 'null');
    expect(calls.map((c) => c[0])).toEqual(['invalid', 'invalid', 'invalid']);
    expect(String(calls[0]![1])).toMatch(/malformed upstream event/);
  });
  it('an error object inside the stream is an upstream error', () => {
    expect(run('{"error":{"message":"overloaded"}}')).toEqual([['upstreamError', 'overloaded']]);
  });
  it('every valid chunk is passed on verbatim first', () => {
    const seen: string[] = [];
    const data = '{"id":"a","choices":[{"delta":{"content":"x"}}],"system_fingerprint":"fp"}';
    interpret(data, {
      chunk: (d) => seen.push(d),
      content: () => seen.push('content'),
      reasoning: () => undefined,
      finish: () => undefined,
      usage: () => undefined,
      done: () => undefined,
      invalid: () => undefined,
      upstreamError: () => undefined,
    });
    expect(seen).toEqual([data, 'content']);
  });
});

describe('the token fast path', () => {
  const shape = (delta: string, finish = 'null') =>
    `{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":${delta},"logprobs":null,"finish_reason":${finish}}]}`;

  it('gives exactly what a full parse gives, for any token text', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.boolean(), (text, reasoning) => {
        const delta = reasoning
          ? `{"content":null,"reasoning_content":${JSON.stringify(text)}}`
          : `{"content":${JSON.stringify(text)}}`;
        const calls = run(shape(delta));
        const expected = text.length === 0 ? [] : [[reasoning ? 'reasoning' : 'content', text]];
        expect(calls).toEqual(expected);
      }),
      { numRuns: 2000 },
    );
  });

  it('steps aside for anything else: finish chunks, extra delta fields, truncated data', () => {
    expect(run(shape('{"content":"a"}', '"stop"'))).toEqual([
      ['content', 'a'],
      ['finish', 'stop', undefined],
    ]);
    expect(run(shape('{"content":"a","tool_calls":[]}'))).toEqual([['content', 'a']]);
    const truncated = shape('{"content":"a"}').slice(0, -1);
    expect(run(truncated).map((c) => c[0])).toEqual(['invalid']);
    expect(run(shape('{"content":"bad \\q escape"}')).map((c) => c[0])).toEqual(['invalid']);
  });
});

describe('interpretBytes: the same deltas as interpret, read from the bytes', () => {
  type Call = [string, ...unknown[]];
  const recorder = (calls: Call[]): DeltaSink => ({
    chunk: () => undefined,
    content: (t) => calls.push(['content', t]),
    reasoning: (t) => calls.push(['reasoning', t]),
    finish: (r, u) => calls.push(['finish', r, u]),
    usage: (u) => calls.push(['usage', u]),
    done: () => calls.push(['done']),
    invalid: (m) => calls.push(['invalid', m]),
    upstreamError: (m) => calls.push(['upstreamError', m]),
  });
  const head =
    '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"deepseek-chat",' +
    '"system_fingerprint":"fp","choices":[{"index":0,"delta":';
  const token = (t: string) =>
    `${head}{"content":${JSON.stringify(t)}},"logprobs":null,"finish_reason":null}]}`;
  const thought = (t: string) =>
    `${head}{"content":null,"reasoning_content":${JSON.stringify(t)}},"logprobs":null,"finish_reason":null}]}`;

  /** Each data string as one line of one buffer (as the decoder hands them over). */
  function both(data: string[], textScan?: ByteScan): { text: Call[]; bytes: Call[] } {
    const text: Call[] = [];
    // What the decoder would hand over: the text of the bytes (a lone surrogate is U+FFFD there).
    for (const d of data)
      interpret(Buffer.from(d, 'utf8').toString('utf8'), recorder(text), textScan);
    const bytes: Call[] = [];
    const buf = Buffer.from(data.map((d) => `data: ${d}\n\n`).join(''), 'utf8');
    const scan = new ByteScan();
    let at = 0;
    for (const d of data) {
      const start = at + 6;
      const end = start + Buffer.byteLength(d);
      interpretBytes(buf, start, end, scan, recorder(bytes));
      at = end + 2;
    }
    return { text, bytes };
  }

  it('a token chunk with a broken envelope is invalid, never a token (envelope kept per stream)', () => {
    const broken = (t: string) => token(t).replace('"created":1,', '"created":1,BROKEN,');
    const later = (t: string) => token(t).replace('"created":1,', '"created":2,');
    const data = [token('a'), token('b'), broken('x'), token('c'), later('d'), broken('y')];
    const { text, bytes } = both(data, new ByteScan());
    const expected = [
      ['content', 'a'],
      ['content', 'b'],
      ['invalid', expect.stringContaining('malformed upstream event')],
      ['content', 'c'],
      ['content', 'd'],
      ['invalid', expect.stringContaining('malformed upstream event')],
    ];
    expect(text).toEqual(expected);
    expect(bytes).toEqual(expected);
  });

  it("hands each token's literal bytes along, unless they were not valid UTF-8", () => {
    const seen: Array<[string, string | undefined, boolean | undefined]> = [];
    const sink: DeltaSink = {
      ...recorder([]),
      content: (t, src) =>
        seen.push([t, src && src.buf.toString('latin1', src.start, src.end), src?.escaped]),
      reasoning: (t, src) =>
        seen.push([`(r)${t}`, src && src.buf.toString('latin1', src.start, src.end), src?.escaped]),
    };
    const lit = (t: string | Buffer) =>
      Buffer.concat([
        Buffer.from(`${head}{"content":"`),
        Buffer.from(t),
        Buffer.from('"},"logprobs":null,"finish_reason":null}]}'),
      ]);
    const scan = new ByteScan();
    const feed = (data: string | Buffer) => {
      const buf = Buffer.concat([Buffer.from('data: '), Buffer.from(data), Buffer.from('\n\n')]);
      interpretBytes(buf, 6, buf.length - 2, scan, sink);
    };
    feed(thought('hm'));
    feed(lit('plain'));
    feed(lit('caf\\u00e9 \\"q\\"\\n'));
    feed(lit('流'));
    feed(lit(Buffer.from([0x62, 0x61, 0x64, 0x20, 0xff, 0xfe]))); // "bad " and two non-UTF-8 bytes
    expect(seen).toEqual([
      ['(r)hm', 'hm', false],
      ['plain', 'plain', false],
      ['café "q"\n', 'caf\\u00e9 \\"q\\"\\n', true],
      ['流', Buffer.from('流').toString('latin1'), false],
      ['bad \ufffd\ufffd', undefined, undefined],
    ]);
  });

  it('a first token chunk that is more than a token is read whole, never its envelope kept', () => {
    const tail = ',"logprobs":null,"finish_reason":null}]}';
    const withError = `{"error":{"message":"boom"},"choices":[{"index":0,"delta":{"content":"hi"}${tail}`;
    const nestedNull = `${head}{"content":"hi"},"x":{"finish_reason":null},"finish_reason":"stop"}]}`;
    const twoChoices =
      `${head}{"content":"hi"},"logprobs":null,"finish_reason":null},` +
      `{"index":1,"delta":{"content":"yo"}${tail}`;
    for (const [data, expected] of [
      [withError, [['upstreamError', 'boom']]],
      [
        nestedNull,
        [
          ['content', 'hi'],
          ['finish', 'stop', undefined],
        ],
      ],
      [twoChoices, [['content', 'hi']]],
    ] as const) {
      const { text, bytes } = both([data, token('next')], new ByteScan());
      expect(text).toEqual([...expected, ['content', 'next']]);
      expect(bytes).toEqual(text);
    }
  });

  it("a token's bytes stay its own while its sink makes another stream interpret", () => {
    // Stream A's sink, before it reads the token's bytes, interprets a chunk of stream B (the
    // same event-loop turn; the searches are shared by all streams, the token record is not).
    const a = Buffer.from(token('aaa'));
    const b = Buffer.from(token('bbb'));
    const scanA = new ByteScan();
    const scanB = new ByteScan();
    let seen = '';
    interpretBytes(a, 0, a.length, scanA, {
      ...recorder([]),
      content: (_t, src) => {
        interpretBytes(b, 0, b.length, scanB, recorder([]));
        seen = src!.buf.toString('utf8', src!.start, src!.end);
      },
    });
    expect(seen).toBe('aaa');
  });

  it("keeps a stream's envelope in a buffer of its own, not a slice of Node's shared pool", () => {
    const scan = new ByteScan();
    const buf = Buffer.from(`data: ${token('a')}\n\ndata: ${token('b')}\n\n`);
    const first = buf.indexOf('\n\n');
    interpretBytes(buf, 6, first, scan, recorder([]));
    expect(scan.joint).toBeDefined();
    // A slice of the pool would keep its whole 8 KiB block alive as long as the stream.
    expect(scan.joint!.buffer.byteLength).toBe(scan.joint!.length);
    // Tail, then the blank line and `data: `, then head: the envelope around the token 'a'.
    const chunk = token('a');
    const at = chunk.indexOf('"a"');
    expect(scan.joint!.toString()).toBe(
      `${chunk.slice(at + 2)}\n\ndata: ${chunk.slice(0, at + 1)}`,
    );
    expect(scan.headLength).toBe(at + 1);
    expect(scan.tailLength).toBe(chunk.length - at - 2);
  });

  it('a chunk in the checked envelope with more than one string between head and tail', () => {
    // Same head, same tail, and a token region that is not one literal: never a token of it.
    const twoFields = `${head}{"content":"a","x":"b"},"logprobs":null,"finish_reason":null}]}`;
    const endsEscaped = `${head}{"content":"a\\"},"logprobs":null,"finish_reason":null}]}`;
    const { text, bytes } = both([token('first'), twoFields, token('next'), endsEscaped]);
    expect(bytes).toEqual(text);
    expect(bytes).toEqual([
      ['content', 'first'],
      ['content', 'a'],
      ['content', 'next'],
      ['invalid', expect.stringContaining('malformed upstream event')],
    ]);
  });

  it('tokens, reasoning, escapes, multi-byte text, finish, usage, [DONE]', () => {
    const data = [
      `${head}{"role":"assistant","content":null,"reasoning_content":null},"logprobs":null,"finish_reason":null}]}`,
      thought('Let me'),
      thought(''),
      token('Hello'),
      token(''),
      token(' "quoted" \\ back\\slash\n\ttab'),
      token('流式传输 🚀 café'),
      token('\u0000\u001f\u2028'),
      `${head}{"content":"end"},"logprobs":null,"finish_reason":"stop"}],"usage":{"total_tokens":3}}`,
      '{"choices":[],"usage":{"total_tokens":3}}',
      '[DONE]',
      '{"error":{"message":"overloaded"}}',
      '{"choices":[',
    ];
    const { text, bytes } = both(data);
    expect(bytes).toEqual(text);
    expect(bytes.filter((c) => c[0] === 'content').map((c) => c[1])).toEqual([
      'Hello',
      ' "quoted" \\ back\\slash\n\ttab',
      '流式传输 🚀 café',
      '\u0000\u001f\u2028',
      'end',
    ]);
  });

  it('random tokens and random damage to the chunks (fast-check)', () => {
    const chunkText = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 12 }).map(token),
      fc.string({ maxLength: 12 }).map(thought),
      fc.constantFrom('[DONE]', '{"choices":[]}', `${head}{"content":"x"}}]}`),
    );
    // Damage: cut the chunk short, or overwrite one character with a structural one.
    const damaged = fc
      .tuple(
        chunkText,
        fc.nat(),
        fc.constantFrom('', '"', '\\', '}', '{', ',', 'x', 'é'),
        fc.boolean(),
      )
      .map(([d, at, ch, cut]) => {
        if (d.length === 0) return d;
        const i = at % d.length;
        return cut ? d.slice(0, i) : d.slice(0, i) + ch + d.slice(i + 1);
      });
    fc.assert(
      fc.property(
        fc.array(fc.oneof(chunkText, damaged), { minLength: 1, maxLength: 8 }),
        (data) => {
          const { text, bytes } = both(data.filter((d) => !/[\r\n]/.test(d)));
          expect(bytes).toEqual(text);
        },
      ),
      { numRuns: 3000 },
    );
  });
});
