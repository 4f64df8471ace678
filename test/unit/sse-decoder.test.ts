// The SSE decoder: WHATWG rules, any chunk boundary (inside UTF-8 sequences too), bounded
// buffers, and linear work however the bytes are split.

import fc from 'fast-check';
import { createSseDecoder, Utf8Stream } from '../../src/stream/decoder';

interface Seen {
  events: Array<[string, string | undefined]>;
  comments: string[];
  overflows: number;
}

/** How many events came through onDataBytes in the last byte-path decodeChunks(). */
let byteEvents = 0;

/**
 * Decode, optionally with the byte path (onDataBytes): its events, decoded, go into the same
 * list, so both paths can be compared as they would be seen by a consumer.
 */
function decodeChunks(chunks: Uint8Array[], max?: number, bytePath = false): Seen {
  const seen: Seen = { events: [], comments: [], overflows: 0 };
  byteEvents = 0;
  const d = createSseDecoder(
    {
      onEvent: (data, type) => seen.events.push([data, type]),
      onComment: (c) => seen.comments.push(c),
      onOverflow: () => seen.overflows++,
      onDataBytes: bytePath
        ? (buf, start, end) => {
            byteEvents++;
            seen.events.push([buf.toString('utf8', start, end), undefined]);
          }
        : undefined,
    },
    max,
  );
  for (const c of chunks) d.feed(c);
  d.end();
  return seen;
}

const chunk = (i: number, content: string | null, reasoning?: string) =>
  `data: {"id":"x","choices":[{"index":0,"delta":{"content":${JSON.stringify(content)}${
    reasoning === undefined ? '' : `,"reasoning_content":${JSON.stringify(reasoning)}`
  }},"finish_reason":null}],"n":${i}}\n\n`;

const FIXTURES: Record<string, string> = {
  plain:
    'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n' +
    chunk(1, 'Hello') +
    chunk(2, ' world') +
    'data: {"choices":[{"delta":{"content":""},"finish_reason":"stop"}],"usage":{"total_tokens":3}}\n\n' +
    'data: [DONE]\n\n',
  keepAlive:
    ': keep-alive\n\n: keep-alive\n\n' +
    chunk(1, 'a') +
    ': keep-alive\n\n' +
    chunk(2, 'b') +
    'data: [DONE]\n\n',
  reasoningNullContent:
    chunk(1, null, 'Let me') + chunk(2, null, ' think') + chunk(3, 'Answer') + 'data: [DONE]\n\n',
  crlf: (chunk(1, 'one') + chunk(2, 'two') + ': keep-alive\n\n').replace(/\n/g, '\r\n'),
  cr: (chunk(1, 'one') + chunk(2, 'two') + ': keep-alive\n\n').replace(/\n/g, '\r'),
  bom: '\ufeff' + chunk(1, 'after bom') + 'data: [DONE]\n\n',
  multiLine: 'data: first\ndata: second\ndata:third\n\nevent: custom\nid: 7\ndata: x\n\n',
  cjkEmoji: chunk(1, '流式传输') + chunk(2, ' 🚀✨') + chunk(3, ' 👩‍💻 café') + chunk(4, 'の世界😀'),
  usageOnly:
    chunk(1, 'x') +
    'data: {"choices":[{"delta":{"content":""},"finish_reason":"stop"}],"usage":null}\n\n' +
    'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n' +
    'data: [DONE]\n\n',
  oddFields: 'retry: 100\nfoo: bar\nnocolon\ndata\n\nid: 1\nevent:\ndata: y\n\n',
};

const bytesOf = (s: string) => Buffer.from(s, 'utf8');

/** `bytes` cut at the given points (taken modulo its length, in order, duplicates ignored). */
function splitAt(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((x, y) => x - y);
  const pieces: Uint8Array[] = [];
  let at = 0;
  for (const p of points) {
    pieces.push(bytes.subarray(at, p));
    at = p;
  }
  pieces.push(bytes.subarray(at));
  return pieces;
}

describe('each fixture decodes the same whole, split at every index, and byte by byte', () => {
  for (const [name, text] of Object.entries(FIXTURES)) {
    it(name, () => {
      const bytes = bytesOf(text);
      const whole = decodeChunks([bytes]);
      expect(whole.events.length).toBeGreaterThan(0);
      for (let i = 0; i <= bytes.length; i++) {
        expect(decodeChunks([bytes.subarray(0, i), bytes.subarray(i)])).toEqual(whole);
      }
      const single = Array.from(bytes, (b) => Uint8Array.of(b));
      expect(decodeChunks(single)).toEqual(whole);
      // The byte path (onDataBytes) sees the same events, whole and split anywhere.
      expect(decodeChunks([bytes], undefined, true)).toEqual(whole);
      for (let i = 0; i <= bytes.length; i++) {
        const pieces = [bytes.subarray(0, i), bytes.subarray(i)];
        expect(decodeChunks(pieces, undefined, true)).toEqual(whole);
      }
      expect(decodeChunks(single, undefined, true)).toEqual(whole);
    });
  }
});

describe('the byte path (onDataBytes)', () => {
  it('takes every single-line data event of an LF stream that arrives whole', () => {
    const bytes = bytesOf(FIXTURES.plain! + FIXTURES.cjkEmoji!);
    const seen = decodeChunks([bytes], undefined, true);
    expect(byteEvents).toBe(seen.events.length);
    expect(byteEvents).toBe(9);
  });

  it('goes back to the byte path after a line split across feeds', () => {
    const bytes = bytesOf(chunk(1, 'a') + chunk(2, 'b') + chunk(3, 'c') + chunk(4, 'd'));
    const cut = bytes.indexOf('"b"');
    const seen = decodeChunks([bytes.subarray(0, cut), bytes.subarray(cut)], undefined, true);
    expect(seen.events).toHaveLength(4);
    // Events 1, 3 and 4 arrive whole; event 2 is finished through the text path.
    expect(byteEvents).toBe(3);
  });

  it('leaves CR streams, multi-line data, named events and a BOM to the rules of the text path', () => {
    for (const name of ['crlf', 'cr', 'multiLine', 'bom', 'oddFields']) {
      const bytes = bytesOf(FIXTURES[name]!);
      expect(decodeChunks([bytes], undefined, true)).toEqual(decodeChunks([bytes]));
    }
  });

  it('keeps the bound on event size', () => {
    const big = bytesOf(`data: ${'x'.repeat(300)}

${chunk(1, 'ok')}`);
    const seen = decodeChunks([big], 256, true);
    expect(seen.overflows).toBe(1);
    expect(seen.events).toHaveLength(1);
  });
});

describe('WHATWG details', () => {
  it('keep-alive comments are comments, never events', () => {
    const seen = decodeChunks([bytesOf(FIXTURES.keepAlive!)]);
    expect(seen.comments).toEqual(['keep-alive', 'keep-alive', 'keep-alive']);
    expect(seen.events.map(([d]) => d)).not.toContain('keep-alive');
    expect(seen.events).toHaveLength(3);
  });

  it('joins multi-line data with LF, strips one leading space, keeps the event type', () => {
    const seen = decodeChunks([bytesOf(FIXTURES.multiLine!)]);
    expect(seen.events).toEqual([
      ['first\nsecond\nthird', undefined],
      ['x', 'custom'],
    ]);
  });

  it('strips a leading BOM only', () => {
    const seen = decodeChunks([bytesOf(FIXTURES.bom!)]);
    expect(seen.events[0]![0].startsWith('{')).toBe(true);
  });

  it('keeps multi-byte text intact across any split', () => {
    const seen = decodeChunks([bytesOf(FIXTURES.cjkEmoji!)]);
    const text = seen.events.map(([d]) => JSON.parse(d).choices[0].delta.content).join('');
    expect(text).toBe('流式传输 🚀✨ 👩‍💻 caféの世界😀');
    expect(text).not.toContain('\ufffd');
  });

  it('with CR endings, dispatches an event as soon as its blank line ends (no wait for more)', () => {
    const events: string[] = [];
    const d = createSseDecoder({
      onEvent: (data) => events.push(data),
      onOverflow: () => undefined,
    });
    d.feed(bytesOf('data: x\r\r'));
    expect(events).toEqual(['x']);
    d.feed(bytesOf('\ndata: y\r\n\r\n')); // a CR then LF split across feeds is one line end
    expect(events).toEqual(['x', 'y']);
  });

  it('discards an unterminated last event at end()', () => {
    const seen = decodeChunks([bytesOf('data: complete\n\ndata: partial')]);
    expect(seen.events).toEqual([['complete', undefined]]);
  });

  it('ignores an empty data-less event and unknown fields', () => {
    const seen = decodeChunks([bytesOf('event: x\n\nfoo: 1\n\n')]);
    expect(seen.events).toEqual([]);
  });

  it('tracks the last event id, ignoring ids with NUL', () => {
    const events: string[] = [];
    const d = createSseDecoder({ onEvent: (x) => events.push(x), onOverflow: () => undefined });
    d.feed(bytesOf('id: 42\ndata: a\n\nid: bad\0id\ndata: b\n\n'));
    expect(d.lastEventId).toBe('42');
    d.reset();
    expect(d.lastEventId).toBe('');
  });
});

describe('bounds', () => {
  it('an event over the bound is reported once and dropped; the next event decodes', () => {
    const big = 'data: ' + 'x'.repeat(5000) + '\n\n';
    const seen = decodeChunks([bytesOf(big + 'data: ok\n\n')], 1024);
    expect(seen.overflows).toBe(1);
    expect(seen.events).toEqual([['ok', undefined]]);
  });

  it('a line that never ends is bounded too, even fed byte by byte', () => {
    const bytes = bytesOf('data: ' + 'y'.repeat(3000));
    const seen = decodeChunks(
      Array.from(bytes, (b) => Uint8Array.of(b)),
      1024,
    );
    expect(seen.overflows).toBeGreaterThanOrEqual(1);
    expect(seen.events).toEqual([]);
  });
});

describe('an overflow inside a line', () => {
  it.each([false, true])(
    'drops the rest of that event when the line ends in a later feed (byte path: %s)',
    (bytePath) => {
      const seen = decodeChunks(
        [
          bytesOf('data: ' + 'A'.repeat(2000)),
          bytesOf('\ndata: rest-of-the-same-event\n\ndata: next\n\n'),
        ],
        1024,
        bytePath,
      );
      expect(seen.overflows).toBe(1);
      expect(seen.events).toEqual([['next', undefined]]);
    },
  );

  it('is reported once however many feeds the dropped line takes', () => {
    const bytes = bytesOf('data: ' + 'y'.repeat(3000) + '\n\ndata: next\n\n');
    const seen = decodeChunks(
      Array.from(bytes, (b) => Uint8Array.of(b)),
      1024,
    );
    expect(seen.overflows).toBe(1);
    expect(seen.events).toEqual([['next', undefined]]);
  });
});

describe('linear work', () => {
  // Count the characters the decoder copies by watching Array.prototype.join and
  // String.prototype.slice: a quadratic decoder re-copies its buffer on every feed.
  function copiedChars(input: Buffer, piece: number): number {
    let copied = 0;
    const join = Array.prototype.join;
    const slice = String.prototype.slice;
    Array.prototype.join = function (this: unknown[], sep?: string) {
      const r = join.call(this, sep);
      copied += r.length;
      return r;
    };
    String.prototype.slice = function (this: string, a?: number, b?: number) {
      const r = slice.call(this, a, b);
      copied += r.length;
      return r;
    };
    try {
      const d = createSseDecoder(
        { onEvent: () => undefined, onOverflow: () => undefined },
        1 << 30,
      );
      for (let i = 0; i < input.length; i += piece) d.feed(input.subarray(i, i + piece));
      d.end();
    } finally {
      Array.prototype.join = join;
      String.prototype.slice = slice;
    }
    return copied;
  }

  it('a 10 MB single-line event fed in 1-byte pieces copies O(n) characters', () => {
    const n = 10 * 1024 * 1024;
    const input = Buffer.alloc(n + 8, 'a');
    input.write('data: ', 0);
    input.write('\n\n', n + 6);
    const copied = copiedChars(input, 1);
    expect(copied).toBeLessThan(4 * n);
  }, 60_000);

  it('work grows linearly with many small events: 2x the input, about 2x the copies', () => {
    const ev = Buffer.from('data: {"choices":[{"delta":{"content":"tok"}}]}\n\n');
    const one = Buffer.concat(Array(20_000).fill(ev));
    const two = Buffer.concat([one, one]);
    const a = copiedChars(one, 7);
    const b = copiedChars(two, 7);
    expect(b / a).toBeGreaterThan(1.8);
    expect(b / a).toBeLessThan(2.2);
  });
});

describe('properties (fast-check)', () => {
  it('random bytes with random splits never throw and decode like the whole', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 400 }),
        fc.array(fc.nat(400), { maxLength: 8 }),
        (bytes, cuts) => {
          const pieces = splitAt(bytes, cuts);
          const buf = Buffer.from(bytes);
          const whole = decodeChunks([buf]);
          expect(decodeChunks(pieces)).toEqual(whole);
          expect(decodeChunks(pieces, undefined, true)).toEqual(whole);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('well-formed events with any line endings round-trip exactly through random splits', () => {
    const dataLine = fc
      .string({ unit: 'grapheme', maxLength: 30 })
      .filter((s) => !/[\r\n]/.test(s));
    const ending = fc.constantFrom('\n', '\r\n', '\r');
    fc.assert(
      fc.property(
        fc.array(fc.tuple(dataLine, ending, ending), { minLength: 1, maxLength: 10 }),
        fc.array(fc.nat(2000), { maxLength: 6 }),
        (events, cuts) => {
          // A CR followed by LF would be one line end, not the blank line that ends the event.
          const wire = events
            .map(([d, e1, e2]) => `data: ${d}${e1}${e1 === '\r' && e2 === '\n' ? '\r' : e2}`)
            .join('');
          const bytes = Buffer.from(wire, 'utf8');
          const pieces = splitAt(bytes, cuts);
          const seen = decodeChunks(pieces);
          expect(seen.events.map(([d]) => d)).toEqual(events.map(([d]) => d));
          expect(decodeChunks(pieces, undefined, true)).toEqual(seen);
        },
      ),
      { numRuns: 1500 },
    );
  });

  it('buffering stays bounded: no event ever exceeds the bound, whatever the input', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 3000 }), (s) => {
        let longest = 0;
        const d = createSseDecoder(
          {
            onEvent: (data) => (longest = Math.max(longest, data.length)),
            onOverflow: () => undefined,
          },
          256,
        );
        const bytes = Buffer.from('data: ' + s + '\n\n');
        for (let i = 0; i < bytes.length; i += 13) d.feed(bytes.subarray(i, i + 13));
        expect(longest).toBeLessThanOrEqual(256);
      }),
      { numRuns: 500 },
    );
  });
});

describe('Utf8Stream: the text TextDecoder gives, whatever the bytes and the splits', () => {
  // Bytes weighted towards the interesting ones: leads of every length, continuations, the
  // invalid C0/C1/F5-FF, surrogate and overlong prefixes (E0 80, ED A0, F0 80, F4 90), a BOM.
  const byte = fc.oneof(
    fc.integer({ min: 0, max: 255 }),
    fc.constantFrom(0x41, 0x0a, 0x80, 0xbf, 0xc0, 0xc2, 0xe0, 0xed, 0xa0, 0xef, 0xbb),
    fc.constantFrom(0xf0, 0xf4, 0x90, 0x9f, 0xf5, 0xff),
  );
  const decodeAll = (pieces: Uint8Array[]): string => {
    const u = new Utf8Stream();
    return pieces.map((p) => u.decode(p)).join('') + u.end();
  };

  it('random bytes, random splits', () => {
    fc.assert(
      fc.property(
        fc.array(byte, { maxLength: 60 }),
        fc.array(fc.nat(60), { maxLength: 8 }),
        fc.boolean(),
        (list, cuts, bom) => {
          const bytes = Uint8Array.from(bom ? [0xef, 0xbb, 0xbf, ...list] : list);
          const expected = new TextDecoder('utf-8').decode(bytes);
          expect(decodeAll(splitAt(bytes, cuts))).toBe(expected);
          expect(decodeAll(Array.from(bytes, (b) => Uint8Array.of(b)))).toBe(expected);
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('holds a split character and completes it with the next chunk', () => {
    const u = new Utf8Stream();
    const rocket = Buffer.from('a🚀', 'utf8');
    expect(u.decode(rocket.subarray(0, 3))).toBe('a');
    expect(u.decode(rocket.subarray(3))).toBe('🚀');
    expect(u.end()).toBe('');
  });

  it('an incomplete sequence at the very end becomes one U+FFFD', () => {
    const u = new Utf8Stream();
    expect(u.decode(Uint8Array.of(0x61, 0xe4, 0xb8))).toBe('a');
    expect(u.end()).toBe('\ufffd');
  });
});

describe('the API', () => {
  it('feed, end and reset work detached from the decoder (as stream listeners, in forEach)', () => {
    const events: string[] = [];
    const { feed, end, reset } = createSseDecoder({
      onEvent: (data) => events.push(data),
      onOverflow: () => undefined,
    });
    [Buffer.from('data: a\n\nda'), Buffer.from('ta: b\n\n')].forEach(feed);
    feed(Buffer.from('data: cut'));
    reset();
    feed(Buffer.from('data: c\n\ndata: unterminated'));
    end();
    expect(events).toEqual(['a', 'b', 'c']);
  });
});
