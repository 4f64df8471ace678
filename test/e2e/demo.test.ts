/// <reference lib="dom" />
// The demo page in headless Chromium (Debian's, driven by playwright-core): tokens appear live,
// Stop stops the upstream, and a dropped connection resumes with the text shown exactly once.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { simulateAnswer } from '../../src/simulator/answer';
import { startStack, waitFor, type Stack } from '../helpers/stack';

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
});
