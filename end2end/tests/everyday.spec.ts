// The app as a person uses it (issue 14): phones, an outbox that survives failures, an honest
// status, what chat/news/ticker users expect, and accessibility (axe-core).
import { test, expect, Page } from '@playwright/test';
import AxeBuilder from '@axe-core/playwright';
import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { Server, staticSite } from './server';
import { open, send } from './pages';

/** Screenshots go to test-results/, and also to $SCREENSHOTS_DIR when set (docs/). */
async function shot(page: Page, name: string) {
  await page.screenshot({ path: path.join('test-results', `${name}.png`) });
  const dir = process.env.SCREENSHOTS_DIR;
  if (dir) {
    mkdirSync(dir, { recursive: true });
    await page.screenshot({ path: path.join(dir, `${name}.png`) });
  }
}

const bodies = (page: Page) => page.getByTestId('chat-message').locator('.body');

for (const [width, height] of [[320, 640], [390, 844]]) {
  test(`phone layout at ${width} px: compact header, composer in view and wide enough`, async ({ browser }) => {
    const server = await Server.start({ demo: true });
    try {
      const ctx = await browser.newContext({ viewport: { width, height }, isMobile: true, hasTouch: true });
      const page = await ctx.newPage();
      await page.goto(server.base);
      await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
      await server.chat('a-rather-long-nickname-for-a-phone', 'Supercalifragilistic words stay whole on a small screen');
      await expect(bodies(page)).toHaveCount(1);
      // The header is one compact block: the transport picker is one row that scrolls sideways.
      const header = await page.locator('header.top').boundingBox();
      expect(header!.height).toBeLessThanOrEqual(100);
      const ys = await page.locator('.picker button').evaluateAll((bs) => bs.map((b) => b.getBoundingClientRect().top));
      expect(new Set(ys).size).toBe(1);
      // The stats are folded away on a phone.
      await expect(page.locator('details.details')).not.toHaveAttribute('open', '');
      // The composer is on screen without scrolling, and the message box is usable.
      const input = await page.getByTestId('chat-input').boundingBox();
      const sendButton = await page.getByTestId('chat-send').boundingBox();
      expect(input!.y + input!.height).toBeLessThanOrEqual(height);
      expect(sendButton!.x + sendButton!.width).toBeLessThanOrEqual(width);
      expect(input!.width).toBeGreaterThanOrEqual(width - 140);
      // A long name does not squeeze the text: the body gets the panel's width.
      const body = await bodies(page).first().boundingBox();
      const panel = await page.locator('.panel.chat').boundingBox();
      expect(body!.width).toBeGreaterThan(panel!.width * 0.7);
      // Nothing overflows the page sideways.
      expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(width);
      await shot(page, `phone-${width}`);
      await ctx.close();
    } finally {
      await server.stop();
    }
  });
}

test('a message sent while the server is down survives a reload and is delivered once', async ({ browser }) => {
  // The page comes from a static site, so it can be reloaded while the API server is down.
  const site = await staticSite();
  let server = await Server.start({ args: ['--allow-origin', site.base] });
  try {
    const url = `${site.base}/?api=${encodeURIComponent(server.base)}`;
    const page = await open(browser, url, 'ws', 'olive');
    // A second page sends over HTTP (SSE is receive-only): its queue must keep its order too.
    const other = await open(browser, url, 'sse', 'sam');
    await server.stop();
    await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', /reconnecting|offline/);
    await expect(page.getByTestId('retry-now')).toBeVisible();
    await send(page, 'kept through a restart');
    const out = page.getByTestId('chat-outgoing');
    await expect(out).toHaveAttribute('data-status', 'queued');
    await expect(out.locator('.status')).toHaveText(/not sent yet/);
    // The input is free for the next message; the unsent one waits in the outbox.
    await expect(page.getByTestId('chat-input')).toHaveValue('');
    for (const n of [1, 2, 3, 4]) await send(other, `http ${n}`);
    await expect(other.getByTestId('chat-outgoing')).toHaveCount(4);

    await page.reload();
    await expect(page.getByTestId('chat-outgoing')).toHaveCount(1);
    await expect(page.getByTestId('chat-outgoing').locator('.body')).toHaveText('kept through a restart');

    server = await server.restart();
    await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
    await expect(page.getByTestId('chat-message').filter({ hasText: 'kept through a restart' })).toHaveCount(1);
    await expect(page.getByTestId('chat-outgoing')).toHaveCount(0);
    await expect(other.getByTestId('chat-outgoing')).toHaveCount(0);
    // Stored once, and only once, whatever retries happened; each page's in its order.
    const history = await (await fetch(`${server.base}/api/history?stream=chat`)).json();
    const stored: string[] = history.events.map((e: any) => e.data.body);
    expect(stored.filter((b) => b === 'kept through a restart')).toHaveLength(1);
    expect(stored.filter((b) => b.startsWith('http '))).toEqual(['http 1', 'http 2', 'http 3', 'http 4']);
    expect(stored).toHaveLength(5);
    // A reload now brings nothing back into the outbox.
    await page.reload();
    await expect(bodies(page)).toHaveText(stored);
    await expect(page.getByTestId('chat-outgoing')).toHaveCount(0);
    expect(await page.evaluate(() => localStorage.getItem('tidings.outbox'))).toBeNull();
  } finally {
    await server.stop();
    await site.close();
  }
});

test('polling every 30 s says when it checked and when it checks next', async ({ browser }) => {
  const server = await Server.start();
  try {
    const page = await open(browser, server.base, 'poll-30000', 'pat');
    const status = page.getByTestId('conn-state');
    await expect(status).toHaveText(/^checked \d+ s ago · next in \d+ s$/);
    await expect(status).not.toHaveText(/live/);
    // One's own message is stored at once but shown by the next poll: the page says so.
    await send(page, 'waiting for the next poll');
    const out = page.getByTestId('chat-outgoing');
    await expect(out.locator('.status')).toHaveText(/^sent · appears at the next check, in \d+ s$/);
    await expect(out).toHaveCount(0, { timeout: 35_000 });
    await expect(bodies(page)).toHaveText(['waiting for the next poll']);
  } finally {
    await server.stop();
  }
});

test('chat: load older, new messages marker, own messages, unread count in the title', async ({ browser }) => {
  const server = await Server.start({ args: ['--publish-rate', '0'] });
  try {
    for (let i = 1; i <= 60; i++) await server.chat('hist', `history ${i}`);
    const page = await open(browser, server.base, 'ws', 'me');
    await expect(bodies(page)).toHaveCount(50);
    await expect(bodies(page).first()).toHaveText('history 11');
    await page.getByTestId('load-older').click();
    await expect(bodies(page)).toHaveCount(60);
    await expect(bodies(page).first()).toHaveText('history 1');
    await expect(page.getByTestId('load-older')).toHaveCount(0);

    // Own messages look different.
    await send(page, 'mine');
    await expect(page.getByTestId('chat-message').last()).toHaveClass(/mine/);
    await expect(page.getByTestId('chat-message').first()).not.toHaveClass(/mine/);

    // Scrolled up, a new message shows a marker instead of moving the view.
    await page.locator('.chat .scroll').evaluate((el) => { el.scrollTop = -100_000; el.dispatchEvent(new Event('scroll')); });
    await server.chat('other', 'while you read back');
    await expect(page.getByTestId('new-messages')).toHaveText('1 new message ↓');
    await page.getByTestId('new-messages').click();
    await expect(page.getByTestId('new-messages')).toHaveCount(0);

    // A hidden tab counts unread messages in its title; coming back clears it.
    const setHidden = (hidden: boolean) => page.evaluate((h) => {
      Object.defineProperty(document, 'hidden', { value: h, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    }, hidden);
    await setHidden(true);
    await server.chat('other', 'one');
    await server.chat('other', 'two');
    await expect(page).toHaveTitle(/^\(2\) Tidings/);
    await setHidden(false);
    await expect(page).toHaveTitle(/^Tidings/);

    // Right-to-left text is laid out by its own direction.
    await expect(page.getByTestId('chat-message').last().locator('.body')).toHaveAttribute('dir', 'auto');
    expect((page as any).consoleErrors).toEqual([]);
  } finally {
    await server.stop();
  }
});

test('errors in plain words, a counter near the limit, and no empty name', async ({ browser }) => {
  const server = await Server.start();
  try {
    const page = await open(browser, server.base, 'sse', 'ann');
    await page.getByTestId('chat-input').fill('x'.repeat(1_850));
    await expect(page.getByTestId('chat-count')).toHaveText('1,850 / 2,000');
    await send(page, 'y'.repeat(3_000));
    await expect(page.getByTestId('chat-error')).toHaveText('Message is 3,000 characters; the limit is 2,000');
    await expect(page.getByTestId('chat-input')).toHaveAttribute('aria-invalid', 'true');
    await expect(page.getByTestId('chat-outgoing')).toHaveCount(0);
    // An emptied name box falls back to the default name instead of sending nameless.
    await page.getByTestId('nick').fill('');
    await page.getByTestId('chat-input').focus();
    await expect(page.getByTestId('nick')).toHaveValue(/^guest-\d{4}$/);
    await send(page, 'hello');
    await expect(page.getByTestId('chat-message').locator('.author')).toHaveText([/^guest-\d{4}$/]);
  } finally {
    await server.stop();
  }
});

test('accessibility: axe finds no serious or critical violation, desktop and phone', async ({ browser }) => {
  const server = await Server.start({ demo: true });
  const check = async (page: Page, what: string) => {
    const results = await new AxeBuilder({ page }).analyze();
    const bad = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    expect(bad.map((v) => `${what}: ${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)).toEqual([]);
  };
  try {
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const p = await phone.newPage();
    await p.goto(server.base);
    await expect(p.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
    await server.chat('ann', 'a message to check');
    await expect(p.getByTestId('chat-message')).toHaveCount(1);
    await check(p, 'phone');

    const page = await open(browser, server.base, 'poll-30000', 'ann');
    await expect(page.getByTestId('chat-message')).toHaveCount(1);
    // A sent message waiting for the next poll is greyed: it must stay legible (AA).
    await send(page, 'pending until the next poll');
    await expect(page.getByTestId('chat-outgoing')).toHaveAttribute('data-status', 'pending');
    await check(page, 'desktop, pending message');
    await shot(page, 'app-desktop');
    // And an unsent one, with its buttons, while the server is down.
    await server.stop();
    await page.getByTestId('transport-ws').click();
    await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', /reconnecting|offline/);
    await send(page, 'queued while down');
    await expect(page.getByTestId('chat-outgoing').last()).toHaveAttribute('data-status', 'queued');
    await check(page, 'desktop, queued message and reconnecting');
  } finally {
    await server.stop();
  }
});

test('a static loading state shows until the app starts, then gives way to it', async ({ browser }) => {
  const server = await Server.start();
  try {
    const page = await (await browser.newContext()).newPage();
    // Hold the app's code back: what the person sees meanwhile is the static page.
    let release: () => void = () => {};
    const held = new Promise<void>((r) => { release = r; });
    await page.route('**/*.wasm', async (route) => { await held; await route.continue(); });
    await page.goto(server.base);
    await expect(page.locator('#boot')).toHaveText(/Loading live updates/);
    release();
    await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
    await expect(page.locator('#boot')).toHaveCount(0);
    await expect(page.getByTestId('conn-state')).toHaveText('live · Auto: WebSocket');
  } finally {
    await server.stop();
  }
});

test('first live item on screen after load (a figure, printed, not asserted)', async ({ browser }) => {
  const server = await Server.start({ demo: true });
  try {
    // The demo ticker has published by the time the page opens, so history has prices.
    await expect.poll(async () => (await (await fetch(`${server.base}/api/history?stream=ticker&limit=1`)).json()).events.length).toBe(1);
    const firstItem: number[] = [];
    const live: number[] = [];
    for (let i = 0; i < 5; i++) {
      const ctx = await browser.newContext();
      await ctx.addInitScript(() => {
        // Milliseconds since navigation start when the first price and the live state show.
        new MutationObserver(() => {
          const w = window as any;
          if (w.__firstItem === undefined && document.querySelector('[data-testid=tick]')) w.__firstItem = performance.now();
          if (w.__live === undefined && document.querySelector('[data-testid=conn-state][data-state=live]')) w.__live = performance.now();
        }).observe(document, { subtree: true, childList: true, attributes: true });
      });
      const page = await ctx.newPage();
      const asked: string[] = [];
      page.on('request', (r) => asked.push(new URL(r.url()).pathname));
      await page.goto(server.base);
      await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
      await expect(page.getByTestId('tick').first()).toBeVisible();
      // One round trip for what shows first, asked by index.html before the app has loaded
      // and taken by the app.
      expect(asked.filter((p) => p === '/api/snapshot')).toHaveLength(1);
      expect(asked.filter((p) => p === '/api/history' || p === '/api/poll')).toHaveLength(0);
      firstItem.push(await page.evaluate(() => (window as any).__firstItem));
      live.push(await page.evaluate(() => (window as any).__live));
      await ctx.close();
    }
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
    console.log(`first price on screen: median ${median(firstItem).toFixed(0)} ms (runs ${firstItem.map((v) => v.toFixed(0)).join(', ')}); live: median ${median(live).toFixed(0)} ms (runs ${live.map((v) => v.toFixed(0)).join(', ')}) after navigation start`);
  } finally {
    await server.stop();
  }
});
