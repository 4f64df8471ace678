// Frames are byte strings (one character per UTF-8 byte). A token read on the byte path is
// framed from the upstream's own bytes; any other token is serialised here. Either way the client
// must read the same token, and ResponseSink must count and write the bytes it sends.

import type { ServerResponse } from 'node:http';
import fc from 'fast-check';
import { byteString, sseFrames, textFrames } from '../../src/format/frames';
import { ResponseSink } from '../../src/format/response-sink';
import type { TokenSource } from '../../src/stream/interpreter';
import { fakeResponse } from '../helpers/fake-response';

/** What a client decodes from a byte string. */
const utf8 = (frame: string) => Buffer.from(frame, 'latin1').toString('utf8');

/** The token as the upstream may write its literal: JSON.stringify's form, or every non-ASCII escaped. */
function source(text: string, escapeAll: boolean): TokenSource {
  let lit = JSON.stringify(text).slice(1, -1);
  if (escapeAll) {
    lit = lit.replace(
      /[^\x20-\x7e]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
    );
  }
  const buf = Buffer.from(`xx"${lit}"yy`, 'utf8');
  return { buf, start: 3, end: buf.length - 3, escaped: lit.includes('\\') };
}

function sseContent(frame: string): { id: string; content: unknown } {
  const lines = utf8(frame).split('\n');
  expect(lines[0]).toMatch(/^id: /);
  expect(lines[1]).toMatch(/^data: /);
  expect(lines.slice(2)).toEqual(['', '']);
  return {
    id: lines[0]!.slice(4),
    content: (JSON.parse(lines[1]!.slice(6)) as { content: unknown }).content,
  };
}

describe('frames', () => {
  // Whole code points: the engine joins a surrogate pair split across tokens before framing.
  const tokenText = fc.string({ unit: 'grapheme', maxLength: 10 });

  it('SSE: the same token from the upstream bytes or serialised here (fast-check)', () => {
    const frames = sseFrames('req-1', 1000);
    fc.assert(
      fc.property(tokenText, fc.boolean(), fc.integer({ min: 1, max: 1e6 }), (text, all, seq) => {
        const own = sseContent(frames.content(text, seq));
        const copied = sseContent(frames.content(text, seq, source(text, all)));
        expect(own).toEqual({ id: `req-1:${seq}`, content: text });
        expect(copied).toEqual(own);
        const thought = utf8(frames.reasoning(text, seq, source(text, all)));
        expect(thought.startsWith('event: reasoning\n')).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('SSE: an escaped literal goes out as the upstream wrote it, not serialised again', () => {
    const frames = sseFrames('r', 1000);
    const frame = utf8(frames.content('é\n', 3, source('é\n', true)));
    expect(frame).toBe('id: r:3\ndata: {"content":"\\u00e9\\n"}\n\n');
    expect(utf8(frames.content('é\n', 3))).toBe('id: r:3\ndata: {"content":"é\\n"}\n\n');
  });

  it('text: the decoded token, whatever form its literal had (fast-check)', () => {
    const frames = textFrames(true);
    fc.assert(
      fc.property(tokenText, fc.boolean(), (text, all) => {
        expect(utf8(frames.content(text, 1))).toBe(text);
        expect(utf8(frames.content(text, 1, source(text, all)))).toBe(text);
        expect(utf8(frames.reasoning(text, 1, source(text, all)))).toBe(text);
      }),
      { numRuns: 2000 },
    );
    expect(textFrames(false).reasoning('hidden', 1, source('hidden', false))).toBe('');
  });

  it('done and error events carry any text as UTF-8 bytes', () => {
    const frames = sseFrames('r', 1000);
    const data = JSON.stringify({ code: 'upstream_error', message: '服务繁忙 🚀' });
    expect(utf8(frames.error(data, 9)!)).toBe(`event: error\nid: r:9\ndata: ${data}\n\n`);
    expect(utf8(frames.done('{"finish_reason":"stop"}', 10))).toBe(
      'event: done\nid: r:10\ndata: {"finish_reason":"stop"}\n\n',
    );
  });

  it('byteString: ASCII is itself; anything else becomes its UTF-8 bytes', () => {
    const ascii = 'plain ASCII {"x":1}';
    expect(byteString(ascii)).toBe(ascii);
    expect(byteString('é')).toBe('\u00c3\u00a9');
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 20 }), (s) => {
        const b = byteString(s);
        expect(b.length).toBe(Buffer.byteLength(s));
        expect(utf8(b)).toBe(s);
      }),
    );
  });
});

describe('ResponseSink writes byte strings as bytes', () => {
  it('counts the bytes it sends, multi-byte tokens included, and they decode to the tokens', () => {
    const { res, out } = fakeResponse();
    const sink = new ResponseSink(res as unknown as ServerResponse, textFrames(false), {
      requestId: 'r1',
      heartbeatMs: 60_000,
    });
    sink.open();
    sink.content('流式', 1, source('流式', false));
    sink.content(' café ', 2, source(' café ', true));
    sink.content('🚀', 3);
    sink.flush();
    sink.done('{}', 4);
    const body = Buffer.concat(out);
    expect(body.toString('utf8')).toBe('流式 café 🚀');
    expect(sink.bytesOut).toBe(body.length);
  });
});
