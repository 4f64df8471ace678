// What a long answer keeps alive until it ends. Tokens read on the text path (a format that takes
// chunks as text: the non-stream /v1 answer) are slices of their chunk's text; the engine keeps
// the answer for an upstream resume, and must not keep every chunk with it.

import { PassThrough } from 'node:stream';
import { testConfig } from '../../src/config';
import { engineSettings } from '../../src/service';
import { ChatStream } from '../../src/stream/chat-stream';
import { CHAT_BODY, eventStreamClient, quietListener } from '../helpers/engine';
import { heapAfterGc } from '../helpers/heap';

const N = 20_000;
const TOKEN = 'sixteen-chars-ok'; // 16 characters: V8 slices (not copies) at 13 and more

it('a 20,000-token answer on the text path keeps its tokens, not the chunks they came in', async () => {
  const body = new PassThrough();
  let chunks = 0;
  // Takes chunks as text: no byte path.
  const listener = quietListener({ chunk: () => void chunks++ });
  const stream = new ChatStream(
    eventStreamClient(body),
    engineSettings(testConfig()),
    CHAT_BODY,
    listener,
  );
  const done = stream.run();
  while (body.listenerCount('data') === 0) await new Promise((r) => setImmediate(r));
  const before = await heapAfterGc();
  // Each chunk its own line, ~230 bytes, as DeepSeek sends them; 500 per read.
  for (let i = 0; i < N; i += 500) {
    let read = '';
    for (let j = 0; j < 500; j++) {
      read +=
        `data: {"id":"c${i + j}","object":"chat.completion.chunk","created":1,"model":"deepseek-v4-flash",` +
        `"system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"${TOKEN}"},` +
        '"logprobs":null,"finish_reason":null}]}\n\n';
    }
    body.write(read);
    await new Promise((r) => setImmediate(r));
  }
  expect(chunks).toBe(N);
  const held = (await heapAfterGc()) - before;
  body.end(
    'data: {"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
  );
  await done;
  // The tokens themselves are 20,000 x 16 characters (320 KB); the chunks were about 4.6 MB.
  expect(held).toBeLessThan(2_000_000);
});
