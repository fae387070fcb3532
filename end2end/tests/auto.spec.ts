// The Auto transport (issue 9) through proxies that break things the way real ones do
// (deploy/nginx-no-websocket.conf, deploy/nginx-buffering.conf) and the healthy one
// (deploy/nginx.conf): it settles on what works, says why, climbs back when a block is
// lifted, and nothing is lost or shown twice on the way.
import { test, expect, Browser, Page } from '@playwright/test';
import { Server, Proxy, silentWebSocketProxy } from './server';

/** A first visit (empty storage: Auto is the default), probing better transports every 2 s. */
async function visit(browser: Browser, url: string): Promise<Page> {
  const ctx = await browser.newContext();
  await ctx.addInitScript(() => localStorage.setItem('tidings.probe-ms', '2000'));
  const page = await ctx.newPage();
  await page.goto(url);
  await expect(page.getByTestId('transport-auto')).toHaveAttribute('aria-pressed', 'true');
  return page;
}

const status = (page: Page) => page.getByTestId('conn-state');
const ids = (page: Page) => page.getByTestId('chat-message').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-id'))));

/** Every chat message the server stored, by id, in order. */
async function stored(server: Server): Promise<number[]> {
  const h = await (await fetch(`${server.base}/api/history?stream=chat&limit=200`)).json();
  return h.events.map((e: any) => e.id);
}

/** Sends and receives through the page: a message from the page and three from elsewhere
 *  all show once, in the server's order. */
async function chats(page: Page, server: Server, tag: string) {
  await page.getByTestId('chat-input').fill(`from the page ${tag}`);
  await page.getByTestId('chat-send').click();
  for (let i = 1; i <= 3; i++) await server.chat('elsewhere', `${tag} ${i}`);
  await expect(page.getByTestId('chat-outgoing')).toHaveCount(0);
  await expect.poll(() => ids(page)).toEqual(await stored(server));
}

test('a proxy that refuses WebSockets: Auto goes live on SSE and says why', async ({ browser }) => {
  const server = await Server.start();
  const proxy = await Proxy.start('nginx-no-websocket.conf', server.port);
  try {
    const page = await visit(browser, proxy.base);
    await expect(status(page)).toHaveAttribute('data-auto', 'sse');
    await expect(status(page)).toHaveAttribute('data-state', 'live');
    await expect(status(page)).toHaveText('live · Auto: SSE — WebSocket blocked');
    await chats(page, server, 'sse');
  } finally {
    await proxy.stop();
    await server.stop();
  }
});

test('a proxy that also buffers the event stream: Auto goes live on long polling', async ({ browser }) => {
  const server = await Server.start();
  const proxy = await Proxy.start('nginx-buffering.conf', server.port);
  try {
    const page = await visit(browser, proxy.base);
    await expect(status(page)).toHaveAttribute('data-auto', 'longpoll');
    await expect(status(page)).toHaveAttribute('data-state', 'live');
    await expect(status(page)).toHaveText('live · Auto: long polling — WebSocket blocked, event stream held back by a proxy');
    await chats(page, server, 'longpoll');
  } finally {
    await proxy.stop();
    await server.stop();
  }
});

test('the healthy proxy: Auto is on WebSocket, and climbs back to it when a block is lifted', async ({ browser }) => {
  const server = await Server.start({ args: ['--publish-rate', '0'] });
  const healthy = await Proxy.start('nginx.conf', server.port);
  const blocked = await Proxy.start('nginx-no-websocket.conf', server.port);
  try {
    const direct = await visit(browser, healthy.base);
    await expect(status(direct)).toHaveAttribute('data-auto', 'ws');
    await expect(status(direct)).toHaveText('live · Auto: WebSocket');
    await chats(direct, server, 'ws');

    const page = await visit(browser, blocked.base);
    await expect(status(page)).toHaveAttribute('data-auto', 'sse');
    // Publishing continues all through the switch: the page must end with every event once.
    let publishing = true;
    const publisher = (async () => {
      for (let i = 0; publishing; i++) {
        await server.chat('ticker-tape', `during the switch ${i}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await blocked.swap('nginx.conf');
    await expect(status(page)).toHaveAttribute('data-auto', 'ws', { timeout: 20_000 });
    await expect(status(page)).toHaveText('live · Auto: WebSocket');
    await new Promise((r) => setTimeout(r, 500));
    publishing = false;
    await publisher;
    const all = await stored(server);
    await expect.poll(() => ids(page)).toEqual(all);
    expect(new Set(all).size).toBe(all.length);
    await chats(page, server, 'after the climb');
    expect((page as any).consoleErrors ?? []).toEqual([]);
  } finally {
    await healthy.stop();
    await blocked.stop();
    await server.stop();
  }
});

test('a proxy that accepts WebSockets and forwards nothing: Auto is not fooled by an open socket', async ({ browser }) => {
  const server = await Server.start();
  const proxy = await silentWebSocketProxy(server.port);
  try {
    const page = await visit(browser, proxy.base);
    await expect(status(page)).toHaveAttribute('data-auto', 'sse');
    await expect(status(page)).toHaveText('live · Auto: SSE — WebSocket opens but nothing comes through');
    await chats(page, server, 'silent');
  } finally {
    proxy.close();
    await server.stop();
  }
});
