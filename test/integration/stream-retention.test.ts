// What a running stream keeps of its request's routing, and what letting it go must not lose:
// Express's `next` (its routers' closures and the request's final handler) is let go once a
// stream has started; a failure after that still reaches the error handler, and the client's
// stream slot is still held until generation ends.

import http from 'node:http';
import { collectGarbage } from '../helpers/heap';
import { request, startStack, waitFor, type Stack } from '../helpers/stack';

type Run = Stack['app']['service']['run'];

/** The response a service.run call belongs to: the route's meta or listener holds it. */
function responseOf(listener: unknown, meta: unknown): http.ServerResponse {
  const res =
    (meta as { res?: http.ServerResponse }).res ?? (listener as { res?: http.ServerResponse }).res;
  if (!res) throw new Error('no response found on the meta or the listener');
  return res;
}

/** A POST to each streaming route with `content` as its prompt: [path, JSON body]. */
function bothRoutes(content: string): Array<[string, object]> {
  return [
    ['/chat-stream', { prompt: content, thinking: false }],
    [
      '/v1/chat/completions',
      { model: 'deepseek-chat', stream: true, messages: [{ role: 'user', content }] },
    ],
  ];
}

function postJson(url: string, body: object) {
  return request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

/** Open a stream and resolve at its first body bytes, with the response to read on. */
function openStream(
  url: string,
  method: string,
  body?: object,
): Promise<{ res: http.IncomingMessage; req: http.ClientRequest }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method,
      agent: false,
      headers: body ? { 'content-type': 'application/json' } : {},
    });
    req.on('error', reject);
    req.on('response', (res) => {
      res.once('data', () => {
        res.pause();
        resolve({ res, req });
      });
    });
    req.end(body ? JSON.stringify(body) : undefined);
  });
}

describe("an open stream and Express's next", () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(async () => {
    await stack.close();
  });

  const prompt = (tag: string) => `retention ${tag} [[tokens=40 delay=50]]`;
  it.each([
    ['GET /chat-stream', 'GET', `/chat-stream?format=sse&thinking=false&prompt=`, undefined],
    ['POST /chat-stream', 'POST', '/chat-stream', { thinking: false, format: 'sse' }],
    [
      'POST /v1/chat/completions',
      'POST',
      '/v1/chat/completions',
      { model: 'deepseek-chat', stream: true },
    ],
  ] as const)('%s lets it go once the stream has started', async (_name, method, path, shape) => {
    const service = stack.app.service;
    const run = service.run.bind(service);
    const nexts: Array<WeakRef<object>> = [];
    const spy = jest.spyOn(service, 'run').mockImplementation((...args: Parameters<Run>) => {
      const next = (responseOf(args[1], args[2]).req as { next?: object }).next;
      if (next) nexts.push(new WeakRef(next));
      return run(...args);
    });
    const tag = `${method}-${path.length}`;
    let url = stack.url + path;
    let body: object | undefined;
    if (shape === undefined) url += encodeURIComponent(prompt(tag));
    else if ('model' in shape)
      body = { ...shape, messages: [{ role: 'user', content: prompt(tag) }] };
    else body = { ...shape, prompt: prompt(tag) };
    try {
      const { res } = await openStream(url, method, body);
      expect(res.statusCode).toBe(200);
      expect(nexts).toHaveLength(1);
      // A WeakRef keeps its target until the end of the job that made or read it.
      await new Promise((r) => setTimeout(r, 20));
      collectGarbage();
      await new Promise((r) => setTimeout(r, 20));
      collectGarbage();
      expect(nexts[0]!.deref()).toBeUndefined();
      // The stream is whole all the same.
      res.resume();
      const text = await new Promise<string>((resolve) => {
        let all = '';
        res.on('data', (c: Buffer) => (all += c.toString()));
        res.on('end', () => resolve(all));
      });
      expect(res.complete).toBe(true);
      expect(text).toContain(path.startsWith('/v1') ? 'data: [DONE]' : 'event: done');
    } finally {
      spy.mockRestore();
    }
  });

  it.each(bothRoutes('late bug'))(
    'a failure of %s once started still reaches the error handler',
    async (path, body) => {
      // A bug where the service runs the route's code (its bind callback throws).
      const service = stack.app.service;
      const run = service.run.bind(service);
      const spy = jest
        .spyOn(service, 'run')
        .mockImplementation((body, listener, meta, _bind, opts) =>
          run(
            body,
            listener,
            meta,
            () => {
              throw new Error('a bug, on purpose');
            },
            opts,
          ),
        );
      try {
        const res = await postJson(stack.url + path, body);
        expect(res.status).toBe(500);
        const err = JSON.parse(res.body).error;
        expect(err.code).toBe('internal_error');
        expect(stack.logs.some((l) => l.includes('a bug, on purpose'))).toBe(true);
      } finally {
        spy.mockRestore();
      }
    },
  );
});

describe('a bug in what ends a stream (its log line)', () => {
  let stack: Stack;
  const unhandled: unknown[] = [];
  const onUnhandled = (err: unknown) => unhandled.push(err);
  beforeAll(async () => {
    stack = await startStack();
    process.on('unhandledRejection', onUnhandled);
  });
  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    await stack.close();
  });

  it.each(bothRoutes('bookkeeping'))(
    'after %s reaches the error handler, not the process',
    async (path, body) => {
      unhandled.length = 0;
      const logsBefore = stack.logs.length;
      const spy = jest.spyOn(stack.app.metrics, 'streamFinished').mockImplementationOnce(() => {
        throw new Error('a bookkeeping bug, on purpose');
      });
      try {
        const res = await postJson(stack.url + path, body);
        // The answer was whole before its log line was written.
        expect(res.status).toBe(200);
        expect(res.complete).toBe(true);
        await new Promise((r) => setTimeout(r, 100));
        expect(unhandled).toEqual([]);
        const logged = stack.logs
          .slice(logsBefore)
          .filter((l) => l.includes('a bookkeeping bug, on purpose'));
        expect(logged).toHaveLength(1);
        expect(JSON.parse(logged[0]!).msg).toBe('unhandled error');
      } finally {
        spy.mockRestore();
      }
    },
  );
});

describe('a bug in the metrics when a stream ends', () => {
  it('keeps its log line, ends its journal entry, and lets a drain finish', async () => {
    const stack = await startStack();
    try {
      const spy = jest.spyOn(stack.app.metrics, 'streamFinished').mockImplementation(() => {
        throw new Error('a metrics bug, on purpose');
      });
      // A client that leaves mid-stream: the journal entry is ended by the route's end hook
      // (nobody can finish it otherwise), after the service's bookkeeping.
      const res = await request(
        stack.url +
          '/chat-stream?format=sse&thinking=false&prompt=' +
          encodeURIComponent('gone [[tokens=200 delay=10]]'),
        {
          headers: { 'x-request-id': 'metrics-bug-1' },
          onChunk: (_c, soFar) => (soFar.includes('"content"') ? 'abort' : undefined),
        },
      );
      expect(res.complete).toBe(false);
      // A drain while another stream runs: it must end when that stream does, not at its grace.
      const running = request(
        stack.url +
          '/chat-stream?thinking=false&prompt=' +
          encodeURIComponent('last [[tokens=20 delay=10]]'),
      );
      await new Promise((r) => setTimeout(r, 100));
      const t0 = Date.now();
      await stack.app.service.drain(5000);
      const drainMs = Date.now() - t0;
      expect((await running).complete).toBe(true);
      spy.mockRestore();
      expect(drainMs).toBeLessThan(3000);
      expect((await stack.app.journal.meta('metrics-bug-1'))?.state).toBe('failed');
      const lines = stack.logs.map((l) => JSON.parse(l) as { msg: string; requestId?: string });
      expect(
        lines.some((l) => l.msg === 'stream finished' && l.requestId === 'metrics-bug-1'),
      ).toBe(true);
      expect(lines.filter((l) => l.msg === 'unhandled error').length).toBeGreaterThanOrEqual(2);
    } finally {
      await stack.close();
    }
  });
});

describe('a stream whose client left while its journal entry was claimed', () => {
  it('keeps its stream slot until generation ends, not until its handler settled', async () => {
    const stack = await startStack({ maxStreamsPerClient: 1, resumeGraceMs: 1500 });
    try {
      const journal = stack.app.journal;
      const create = journal.create.bind(journal);
      // The claim takes 300 ms (a Redis round trip, slowed): the client leaves during it.
      const spy = jest.spyOn(journal, 'create').mockImplementation(async (...args) => {
        await new Promise((r) => setTimeout(r, 300));
        return create(...args);
      });
      const req = http.request(
        stack.url +
          '/chat-stream?thinking=false&prompt=' +
          encodeURIComponent('slot kept [[tokens=400 delay=20]]'),
        { agent: false, headers: { 'x-request-id': 'slot-kept-1' } },
      );
      req.on('error', () => undefined);
      req.end();
      await new Promise((r) => setTimeout(r, 100));
      req.destroy();
      await new Promise((r) => setTimeout(r, 400)); // the claim is done, the stream started
      spy.mockRestore();
      // Its id was the client's own: it may come back within the grace, so generation goes on,
      // and the one slot this client has stays taken.
      expect(
        stack.sim.requests.some((r) => String(r.body.messages?.[0]?.content).includes('slot kept')),
      ).toBe(true);
      const second = await request(stack.url + '/chat-stream?thinking=false&prompt=second');
      expect(second.status).toBe(429);
      // The grace over with nobody back, generation stops and the slot comes free.
      await new Promise((r) => setTimeout(r, 1800));
      const third = await request(stack.url + '/chat-stream?thinking=false&prompt=third');
      expect(third.status).toBe(200);
    } finally {
      await stack.close();
    }
  });
});

describe('what an open stream hangs on its response', () => {
  let stack: Stack;
  beforeAll(async () => {
    // No resume grace: a client that leaves ends its stream at once, on either route.
    stack = await startStack({ resumeGraceMs: 0 });
  });
  afterAll(async () => {
    await stack.close();
  });

  // A closure per stream on the response's 'drain' and 'close' (and on the request metrics'
  // 'close') was kept, with its context, for the stream's length. The listeners are functions
  // shared by every response; what they act on is found on the response.
  it.each(bothRoutes('shared listeners [[tokens=40 delay=50]]'))(
    '%s: the same listener functions on every response, and they still work',
    async (path, shape) => {
      const body = path === '/chat-stream' ? { ...shape, format: 'sse' } : shape;
      const service = stack.app.service;
      const run = service.run.bind(service);
      const responses: http.ServerResponse[] = [];
      const spy = jest.spyOn(service, 'run').mockImplementation((...args: Parameters<Run>) => {
        const p = run(...args);
        responses.push(responseOf(args[1], args[2]));
        return p;
      });
      try {
        const a = await openStream(stack.url + path, 'POST', body);
        const b = await openStream(stack.url + path, 'POST', body);
        expect(responses).toHaveLength(2);
        const [ra, rb] = responses as [http.ServerResponse, http.ServerResponse];
        for (const event of ['drain', 'close']) {
          const la = ra.listeners(event);
          const lb = rb.listeners(event);
          expect(la.length).toBeGreaterThan(0);
          expect(lb).toHaveLength(la.length);
          expect(la.every((f, i) => f === lb[i])).toBe(true);
        }
        // The close still reaches the stream: the first client leaves and its stream ends (no
        // grace), while the second goes on and ends whole. (The drain is the slow readers' in
        // lifecycle.test.ts.)
        expect(service.active.size).toBe(2);
        a.req.destroy();
        await waitFor(() => service.active.size === 1, 3000, 'the stream whose client left');
        b.res.resume();
        const text = await new Promise<string>((resolve) => {
          let all = '';
          b.res.on('data', (c: Buffer) => (all += c.toString()));
          b.res.on('end', () => resolve(all));
        });
        expect(text).toContain(path.startsWith('/v1') ? 'data: [DONE]' : 'event: done');
        await waitFor(() => service.active.size === 0, 3000, 'the second stream');
      } finally {
        spy.mockRestore();
      }
    },
  );
});
