/// <reference lib="dom" />
// The demo page in headless Chromium (Debian's, driven by playwright-core): tokens appear live,
// Stop stops the upstream, a dropped connection resumes with the text shown exactly once, and a
// refused request shows the proxy's own error code and message.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { simulateAnswer } from '../../src/simulator/answer';
import { request, startStack, waitFor, type Stack } from '../helpers/stack';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = fs.existsSync(CHROMIUM);
const artifacts = path.resolve(__dirname, '../../test-artifacts');

if (!haveChromium && process.env.CI !== 'true') {
  console.warn(`SKIPPED demo page tests: ${CHROMIUM} is missing (apt-get install chromium)`);
}
const suite = haveChromium || process.env.CI === 'true' ? describe : describe.skip;

/** A TCP relay between the browser and the app whose client connections a test can cut. */
async function cuttableRelay(target: string) {
  const { hostname, port } = new URL(target);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream).pipe(client);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    cutAll: () => {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

suite('demo page', () => {
  let browser: Browser;
  let stack: Stack;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    stack = await startStack({ sseRetryMs: 200, resumeGraceMs: 10_000 });
    fs.mkdirSync(artifacts, { recursive: true });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    await stack?.close();
  });

  async function ask(page: Page, base: string, prompt: string, thinking = true) {
    await page.goto(base + '/');
    await page.fill('#prompt', prompt);
    if (!thinking) await page.uncheck('#thinking');
    await page.click('#send');
  }

  function statusStartsWith(page: Page, prefix: string) {
    return page.waitForFunction(
      (p) => document.getElementById('status')!.textContent!.startsWith(p),
      prefix,
      { timeout: 20_000 },
    );
  }

  /** `code: message` of a JSON error from the proxy, as the page should show it. */
  function plainError(body: string): string {
    const { error } = JSON.parse(body) as { error: { code: string; message: string } };
    return `${error.code}: ${error.message}`;
  }

  const sentToUpstream = (s: Stack, prompt: string) =>
    s.sim.requests.filter((r) => r.body.messages?.[0]?.content === prompt);

  it('shows tokens arriving progressively, reasoning in a fold, and a status line', async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
    const prompt = 'demo progressive [[tokens=80 delay=15]]';
    await ask(page, stack.url, prompt);
    const answer = simulateAnswer(prompt, { thinking: true });
    const states = new Set<string>();
    const until = Date.now() + 20_000;
    for (;;) {
      const text = await page.textContent('#answer');
      if (text) states.add(text);
      if (text === answer.text || Date.now() > until) break;
      await page.waitForTimeout(20);
    }
    await page.waitForFunction(() =>
      document.getElementById('status')!.textContent!.startsWith('Done'),
    );
    const final = await page.textContent('#answer');
    expect(final).toBe(answer.text);
    const intermediate = [...states].filter((s) => s !== answer.text);
    expect(intermediate.length).toBeGreaterThanOrEqual(5);
    for (const s of intermediate) expect(answer.text.startsWith(s)).toBe(true);
    expect(await page.textContent('#reasoning')).toBe(answer.reasoningText);
    expect(await page.getAttribute('#reasoning-box', 'open')).toBeNull(); // folded by default
    expect(await page.textContent('#status')).toMatch(/first token \d+ ms · [\d.]+ tokens\/s/);
    await page.screenshot({ path: path.join(artifacts, 'demo.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: path.join(artifacts, 'demo-phone.png'), fullPage: true });
    await page.close();
  }, 40_000);

  it('Stop closes the stream and the proxy stops the upstream', async () => {
    const s = await startStack({ sseRetryMs: 200, resumeGraceMs: 0 });
    const page = await browser.newPage();
    try {
      const prompt = 'demo stop [[tokens=400 delay=20]]';
      await ask(page, s.url, prompt, false);
      await page.waitForFunction(
        () => (document.getElementById('answer')!.textContent ?? '').length > 10,
      );
      await page.click('#stop');
      const rec = () => s.sim.requests.find((r) => r.body.messages?.[0]?.content === prompt);
      await waitFor(() => rec()?.clientClosed === true, 5000, 'upstream closed');
      expect(rec()!.done).toBe(false);
      expect(await page.textContent('#status')).toMatch(/^Stopped/);
    } finally {
      await page.close();
      await s.close();
    }
  }, 40_000);

  it('a connection dropped mid-answer ends with the full text, exactly once', async () => {
    const relay = await cuttableRelay(stack.url);
    const page = await browser.newPage();
    try {
      const prompt = 'demo drop [[tokens=150 delay=15]]';
      await ask(page, relay.url, prompt, false);
      await page.waitForFunction(
        () => (document.getElementById('answer')!.textContent ?? '').length > 40,
      );
      relay.cutAll();
      await page.waitForFunction(
        () => document.getElementById('status')!.textContent!.startsWith('Done'),
        null,
        {
          timeout: 20_000,
        },
      );
      expect(await page.textContent('#answer')).toBe(simulateAnswer(prompt).text);
      expect(
        stack.sim.requests.filter((r) => r.body.messages?.[0]?.content === prompt),
      ).toHaveLength(1);
    } finally {
      await page.close();
      await relay.close();
    }
  }, 40_000);

  it('a request refused by the rate limit shows rate_limited, its message and Retry-After', async () => {
    const s = await startStack({ sseRetryMs: 200, rateLimitMax: 1, rateLimitWindowMs: 60_000 });
    const page = await browser.newPage();
    try {
      await ask(page, s.url, 'demo limit first [[tokens=5]]', false);
      await statusStartsWith(page, 'Done');
      const refused = 'demo limit second [[tokens=5]]';
      await page.fill('#prompt', refused);
      await page.click('#send');
      await statusStartsWith(page, 'Failed');
      // The same refusal, read directly: the page shows the proxy's code and message verbatim.
      const direct = await request(s.url + '/chat-stream?prompt=x');
      expect(direct.status).toBe(429);
      const shown = await page.textContent('#error');
      expect(shown).toMatch(/^rate_limited: /);
      expect(shown).toMatch(/ \(retry after \d+ s\)$/);
      expect(shown!.replace(/ \(retry after \d+ s\)$/, '')).toBe(plainError(direct.body));
      expect(await page.isVisible('#error')).toBe(true);
      expect(await page.textContent('#answer')).toBe('');
      expect(sentToUpstream(s, refused)).toHaveLength(0);
    } finally {
      await page.close();
      await s.close();
    }
  }, 40_000);

  it('a request refused as invalid (a model the server does not allow) shows invalid_request and why', async () => {
    const s = await startStack({ sseRetryMs: 200, allowedModels: ['deepseek-v4-flash'] });
    const page = await browser.newPage();
    try {
      await page.goto(s.url + '/');
      await page.fill('#prompt', 'demo bad model');
      await page.selectOption('#model', 'deepseek-v4-pro');
      await page.click('#send');
      await statusStartsWith(page, 'Failed');
      const direct = await request(s.url + '/chat-stream?prompt=x&model=deepseek-v4-pro');
      expect(direct.status).toBe(400);
      const shown = await page.textContent('#error');
      expect(shown).toMatch(/^invalid_request: unknown model "deepseek-v4-pro"/);
      expect(shown).toBe(plainError(direct.body));
      expect(s.sim.requests).toHaveLength(0);
    } finally {
      await page.close();
      await s.close();
    }
  }, 40_000);

  it('when a refusal has passed by the time the page asks why, it shows that one answer, paid once', async () => {
    const page = await browser.newPage();
    try {
      // The first request is refused (the proxy at its concurrency cap, say); the repeat that
      // asks why is accepted, because the cap was freed in between.
      const seen: { lastEventId: string | null; requestId: string | undefined }[] = [];
      await page.route(
        (url) => url.pathname === '/chat-stream',
        async (route) => {
          const r = route.request();
          seen.push({
            lastEventId: new URL(r.url()).searchParams.get('lastEventId'),
            requestId: r.headers()['x-request-id'],
          });
          if (seen.length > 1) return route.continue();
          await route.fulfill({
            status: 503,
            headers: { 'Content-Type': 'application/json', 'Retry-After': '1' },
            body: '{"error":{"code":"overloaded","message":"too many concurrent streams"}}',
          });
        },
      );
      const prompt = 'demo refusal passed [[tokens=60 delay=10]]';
      await ask(page, stack.url, prompt, false);
      await statusStartsWith(page, 'Done');
      expect(await page.textContent('#answer')).toBe(simulateAnswer(prompt).text);
      expect(await page.isVisible('#error')).toBe(false);
      expect(sentToUpstream(stack, prompt)).toHaveLength(1);
      // The repeat named its stream, and the page resumed that stream rather than start another.
      const id = seen[1]!.requestId!;
      expect(id).toMatch(/^demo-[0-9a-f]{32}$/);
      expect(seen.slice(2).map((r) => r.lastEventId)).toEqual([`${id}:0`]);
    } finally {
      await page.close();
    }
  }, 40_000);

  it('an error event in the middle of a stream shows its code and message', async () => {
    const page = await browser.newPage();
    try {
      const prompt = 'demo in-band [[tokens=20 malformed=5]]';
      await ask(page, stack.url, prompt, false);
      await statusStartsWith(page, 'Failed');
      expect(await page.textContent('#error')).toMatch(
        /^upstream_protocol_error: malformed upstream event: /,
      );
      expect(await page.textContent('#answer')).toBe(
        simulateAnswer(prompt).content.slice(0, 5).join(''),
      );
    } finally {
      await page.close();
    }
  }, 40_000);

  it('a reconnect refused before the first token never starts a second answer', async () => {
    // The head goes out alone after 300 ms of queue (no token yet), then the connection drops.
    // EventSource reconnects into the same stream (the preamble's id), but the client has used
    // its one request of the rate-limit window: the reconnect is refused (429).
    const s = await startStack({
      sseRetryMs: 200,
      heartbeatMs: 300,
      resumeGraceMs: 10_000,
      rateLimitMax: 1,
      rateLimitWindowMs: 60_000,
    });
    const relay = await cuttableRelay(s.url);
    const page = await browser.newPage();
    try {
      let requests = 0;
      await page.route(
        (url) => url.pathname === '/chat-stream',
        (route) => {
          requests++;
          return route.continue();
        },
      );
      const prompt = 'demo queue drop [[queue=3000 ka=100 tokens=5]]';
      await ask(page, relay.url, prompt, false);
      await waitFor(() => s.app.service.active.size === 1, 5000, 'the stream');
      await new Promise((r) => setTimeout(r, 800)); // the head (300 ms hold) reached the page
      relay.cutAll();
      await statusStartsWith(page, 'Failed');
      expect(await page.textContent('#error')).toMatch(/refused to reconnect/);
      await new Promise((r) => setTimeout(r, 300));
      // The stream and its refused reconnect: no request that could start another answer.
      expect(requests).toBe(2);
      expect(sentToUpstream(s, prompt)).toHaveLength(1);
    } finally {
      await page.close();
      await relay.close();
      await s.close();
    }
  }, 40_000);

  it('a reconnect refused after a drop shows stream_expired and Failed, not a truncated Done', async () => {
    // A per-stream journal budget smaller than the answer: after the drop it cannot be resumed.
    const s = await startStack({ sseRetryMs: 200, journalMaxBytesPerStream: 1024 });
    const relay = await cuttableRelay(s.url);
    const page = await browser.newPage();
    try {
      const prompt = 'demo expired [[tokens=150 repeat=10 delay=15]]';
      await ask(page, relay.url, prompt, false);
      await page.waitForFunction(
        () => (document.getElementById('answer')!.textContent ?? '').length > 1100,
      );
      relay.cutAll();
      await statusStartsWith(page, 'Failed');
      const shown = await page.textContent('#error');
      expect(shown).toMatch(/^stream_expired: /);
      const direct = await request(s.url + '/chat-stream', {
        headers: { 'Last-Event-ID': 'x:1' },
      });
      expect(shown).toBe(plainError(direct.body));
      expect(sentToUpstream(s, prompt)).toHaveLength(1);
    } finally {
      await page.close();
      await relay.close();
      await s.close();
    }
  }, 40_000);
});
