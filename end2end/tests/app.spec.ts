import { test, expect, Page } from '@playwright/test';
import { Server, staticSite } from './server';
import { open, send, Transport } from './pages';

/** The ids of the chat messages the page shows, in order. */
async function chatIds(page: Page): Promise<number[]> {
  return page.getByTestId('chat-message').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-id'))));
}

function messages(page: Page) {
  return page.getByTestId('chat-message').locator('.body');
}

test('chat crosses transports: WebSocket, SSE and polling each send and receive', async ({ browser }) => {
  const server = await Server.start();
  try {
    const ws = await open(browser, server.base, 'ws', 'wendy');
    const sse = await open(browser, server.base, 'sse', 'sam');
    const poll = await open(browser, server.base, 'poll-1000', 'pat');

    await send(ws, 'hello from a websocket');
    await send(sse, 'hello from sse (sent over http)');
    await send(poll, 'hello from polling');
    const all = ['hello from a websocket', 'hello from sse (sent over http)', 'hello from polling'];
    for (const page of [ws, sse, poll]) {
      await expect(messages(page)).toHaveText(all);
      // Sent messages leave the outbox once the stream has delivered them.
      await expect(page.getByTestId('chat-outgoing')).toHaveCount(0);
      const ids = await chatIds(page);
      expect(new Set(ids).size).toBe(3);
    }
    // The stats strip counts what the active transport received.
    await expect(ws.getByTestId('stat-events')).not.toHaveText('0');
    await expect(poll.getByTestId('stat-requests')).not.toHaveText('0');
    for (const page of [ws, sse, poll]) expect((page as any).consoleErrors).toEqual([]);
  } finally {
    await server.stop();
  }
});

test('switching transports mid-stream loses and duplicates nothing', async ({ browser }) => {
  const server = await Server.start();
  try {
    const page = await open(browser, server.base, 'ws', 'switcher');
    const published: number[] = [];
    let stop = false;
    const publisher = (async () => {
      for (let i = 0; !stop && i < 400; i++) {
        published.push((await server.chat('bot', `burst ${i}`)).id);
        await new Promise((r) => setTimeout(r, 40));
      }
    })();
    for (const t of ['poll-1000', 'sse', 'longpoll', 'ws', 'sse', 'poll-1000', 'ws'] as Transport[]) {
      await page.getByTestId(`transport-${t}`).click();
      await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
      await page.waitForTimeout(700); // let events flow on this transport before switching again
    }
    stop = true;
    await publisher;
    expect(published.length).toBeGreaterThan(20);
    // Everything published arrives, once, in order (the page keeps the last 200).
    const expected = published.slice(-200);
    await expect.poll(() => chatIds(page), { timeout: 20_000 }).toEqual(expected);
  } finally {
    await server.stop();
  }
});

test('feed and ticker update live', async ({ browser }) => {
  const server = await Server.start({ demo: true });
  try {
    // A price published before the page opens is shown at once, from history.
    await server.publish('ticker', { symbol: 'HIST', price: 5, change: 0.25 });
    const page = await open(browser, server.base, 'sse', 'reader');
    await expect(page.locator('[data-testid=tick][data-symbol=HIST] .price')).toHaveText('5.00');
    // The simulated ticker moves several times a second: a simulated symbol's price must
    // change on screen (a second symbol appearing is not enough).
    const simulated = page.locator('[data-testid=tick]:not([data-symbol=HIST])').first();
    await expect(simulated).toBeVisible();
    const symbol = await simulated.getAttribute('data-symbol');
    const price = page.locator(`[data-testid=tick][data-symbol="${symbol}"] .price`);
    const before = await price.textContent();
    await expect.poll(async () => price.textContent(), { timeout: 15_000 }).not.toBe(before);
    // A story published now appears at the top of the feed.
    const e = await server.publish('feed', { title: 'Breaking: e2e passes', body: 'Film at eleven.', author: 'QA desk' });
    const top = page.getByTestId('feed-item').first();
    await expect(top).toHaveAttribute('data-id', String(e.id));
    await expect(top.locator('h3')).toHaveText('newBreaking: e2e passes');
    // It arrived live, so it is marked new; its time is relative, the full date on hover.
    await expect(top.getByTestId('feed-new')).toBeVisible();
    await expect(top.getByTestId('feed-time')).toHaveText('just now');
    await expect(top.getByTestId('feed-time')).toHaveAttribute('title', /\d{4}/);
    // And a ticker move published through the API shows its price, colour and a sign and
    // arrow (colour is not the only signal); without an open price, no percentage.
    await server.publish('ticker', { symbol: 'ZZZ', price: 12.34, change: -0.56 });
    const zzz = page.locator('[data-testid=tick][data-symbol=ZZZ]');
    await expect(zzz.locator('.price')).toHaveText('12.34');
    await expect(zzz).toHaveClass(/down/);
    await expect(zzz.getByTestId('tick-change')).toHaveText('▼ -0.56');
    // Each symbol has a sparkline of its recent prices, from history and then live.
    await expect.poll(async () => (await page.locator(`[data-testid=tick][data-symbol="${symbol}"] .spark polyline`).getAttribute('points'))?.split(' ').length ?? 0).toBeGreaterThan(2);
    // The demo ticker gives the day's open: the change carries its percentage.
    await expect(page.locator(`[data-testid=tick][data-symbol="${symbol}"]`).getByTestId('tick-change'))
      .toHaveText(/^[▲▼■] [+-]\d+\.\d\d \([+-]\d+\.\d\d%\)$/);
  } finally {
    await server.stop();
  }
});

test('an HTML payload in chat is shown literally', async ({ browser }) => {
  const server = await Server.start();
  try {
    const page = await open(browser, server.base, 'ws', 'viewer');
    const evil = '<img src=x onerror="window.__pwned=1"><b>bold?</b><script>window.__pwned=2</script>';
    await server.chat('<i>mallory</i>', evil);
    await expect(messages(page)).toHaveText([evil]);
    await expect(page.getByTestId('chat-message').locator('.author')).toHaveText(['<i>mallory</i>']);
    expect(await page.locator('[data-testid=chat] img, [data-testid=chat] b, [data-testid=chat] script').count()).toBe(0);
    expect(await page.evaluate(() => (window as any).__pwned)).toBeUndefined();
  } finally {
    await server.stop();
  }
});

test('a server restart: reconnecting, then live, then every new message once', async ({ browser }) => {
  let server = await Server.start();
  try {
    const before = [await server.chat('ann', 'before 1'), await server.chat('ann', 'before 2')];
    const pages: Page[] = [];
    const kinds: Transport[] = ['sse', 'ws', 'poll-1000', 'longpoll'];
    for (const t of kinds) pages.push(await open(browser, server.base, t, `p-${t}`));
    for (const p of pages) await expect(messages(p)).toHaveText(['before 1', 'before 2']);

    await server.stop();
    for (const p of pages) await expect(p.getByTestId('conn-state')).toHaveText(/reconnecting|offline/);
    // Down long enough for every backoff to reach its cap.
    await pages[0].waitForTimeout(6_000);

    server = await server.restart();
    // How long each transport takes to find the server again: a figure for the record, not
    // an assertion (timing on a shared 2-core box is noise-prone).
    const up = Date.now();
    const found = await Promise.all(pages.map(async (p) => {
      await expect(p.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
      return Date.now() - up;
    }));
    console.log(`back live after the server came back: ${kinds.map((k, i) => `${k} ${found[i]} ms`).join(', ')}`);
    const after = [await server.chat('bob', 'after 1'), await server.chat('bob', 'after 2'), await server.chat('bob', 'after 3')];
    expect(after[0].id).toBeGreaterThan(before[1].id);
    for (const p of pages) {
      await expect(p.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
      await expect(messages(p)).toHaveText(['before 1', 'before 2', 'after 1', 'after 2', 'after 3']);
      expect(await chatIds(p)).toEqual([...before, ...after].map((e) => e.id));
      await expect(p.getByTestId('stat-reconnects')).not.toHaveText('0');
    }
  } finally {
    await server.stop();
  }
});

test('a wiped store: each transport is reset, shows the new history and goes on live', async ({ browser }) => {
  let server = await Server.start();
  try {
    for (const body of ['old 1', 'old 2', 'old 3']) await server.chat('ann', body);
    const kinds: Transport[] = ['ws', 'sse', 'longpoll', 'poll-1000'];
    const pages: Page[] = [];
    for (const t of kinds) pages.push(await open(browser, server.base, t, `w-${t}`));
    for (const p of pages) await expect(messages(p)).toHaveText(['old 1', 'old 2', 'old 3']);
    // The same address, a new empty store: every page's cursor (3) is now ahead of the log.
    const port = server.port;
    await server.stop();
    server = await Server.start({ port });
    await server.chat('bob', 'new 1');
    for (const p of pages) {
      await expect(messages(p)).toHaveText(['new 1']);
      await expect(p.getByTestId('notice')).toContainText('reloaded from history');
    }
    await server.chat('bob', 'new 2');
    for (const p of pages) {
      await expect(messages(p)).toHaveText(['new 1', 'new 2']);
      await expect(p.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
    }
  } finally {
    await server.stop();
  }
});

test('the app served from one origin talks to the API on another', async ({ browser }) => {
  const site = await staticSite();
  const server = await Server.start({ args: ['--allow-origin', site.base] });
  try {
    const url = `${site.base}/?api=${encodeURIComponent(server.base)}`;
    const ws = await open(browser, url, 'ws', 'remote-ws');
    const sse = await open(browser, url, 'sse', 'remote-sse');
    await send(sse, 'cross-origin over http');
    await send(ws, 'cross-origin over a websocket');
    for (const p of [ws, sse]) {
      await expect(messages(p)).toHaveText(['cross-origin over http', 'cross-origin over a websocket']);
    }
    // The server function answered across origins too.
    await expect(ws.locator('footer')).toContainText('catches up');
    await expect(ws.locator('footer')).toContainText(server.base);
    // And the server really is on another origin than the page.
    expect(new URL(ws.url()).origin).not.toBe(server.base);
    for (const p of [ws, sse]) expect((p as any).consoleErrors).toEqual([]);
  } finally {
    await server.stop();
    await site.close();
  }
});

test('invalid chat input is refused with a clear message and nothing is sent', async ({ browser }) => {
  const server = await Server.start();
  try {
    const page = await open(browser, server.base, 'ws', 'ok');
    await send(page, '   ');
    await expect(page.getByTestId('chat-error')).toHaveText('Message is empty');
    await expect(page.getByTestId('chat-outgoing')).toHaveCount(0);
    // The name field cannot hold more than the server accepts.
    await page.getByTestId('nick').fill('x'.repeat(60));
    await expect(page.getByTestId('nick')).toHaveValue('x'.repeat(40));
    await send(page, 'fine');
    await expect(page.getByTestId('chat-error')).toBeEmpty();
    await expect(messages(page)).toHaveText(['fine']);
  } finally {
    await server.stop();
  }
});
