// One live connection per browser (issue 9): eight tabs share the leading tab's connection
// (over HTTP/1.1 a seventh tab's event stream would otherwise hang), every tab is live, and
// when the leader closes another takes over from its cursor with nothing lost or repeated.
import { test, expect, Page } from '@playwright/test';
import { Server } from './server';

const ids = (page: Page) => page.getByTestId('chat-message').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-id'))));

async function streams(server: Server): Promise<number> {
  const s = await (await fetch(`${server.base}/api/stats`)).json();
  return s.open_ws + s.open_sse + s.open_long_poll;
}

async function history(server: Server): Promise<number[]> {
  const h = await (await fetch(`${server.base}/api/history?stream=chat&limit=200`)).json();
  return h.events.map((e: any) => e.id);
}

test('eight tabs, one stream connection, every tab live; another tab takes over', async ({ browser }) => {
  const server = await Server.start({ args: ['--publish-rate', '0'] });
  try {
    const ctx = await browser.newContext();
    const tabs: Page[] = [];
    for (let i = 0; i < 8; i++) {
      const page = await ctx.newPage();
      await page.goto(server.base);
      await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
      tabs.push(page);
    }
    await expect(tabs[0].getByTestId('conn-state')).toHaveText('live · Auto: WebSocket');
    for (const t of tabs.slice(1)) await expect(t.getByTestId('conn-state')).toHaveText('live · Auto: WebSocket · via another tab');
    await expect.poll(() => streams(server)).toBe(1);

    await server.chat('elsewhere', 'to every tab');
    await tabs[5].getByTestId('chat-input').fill('from a following tab');
    await tabs[5].getByTestId('chat-send').click();
    const expected = ['to every tab', 'from a following tab'];
    for (const t of tabs) await expect(t.getByTestId('chat-message').locator('.body')).toHaveText(expected);

    // The leader goes: a follower takes the lock and the connection, from its cursor.
    await tabs[0].close();
    const rest = tabs.slice(1);
    await expect.poll(async () => {
      const texts = await Promise.all(rest.map((t) => t.getByTestId('conn-state').textContent()));
      return texts.filter((t) => t === 'live · Auto: WebSocket').length;
    }).toBe(1);
    for (let i = 0; i < 5; i++) await server.chat('elsewhere', `after the handover ${i}`);
    const all = await history(server);
    for (const t of rest) await expect.poll(() => ids(t)).toEqual(all);
    await expect.poll(() => streams(server)).toBe(1);
    // A follower's picker switches the one connection for every tab.
    await rest[3].getByTestId('transport-sse').click();
    for (const t of rest) await expect(t.getByTestId('conn-state')).toHaveText(/^live · SSE/);
    await server.chat('elsewhere', 'over sse');
    const after = await history(server);
    for (const t of rest) await expect.poll(() => ids(t)).toEqual(after);
    await expect.poll(async () => (await (await fetch(`${server.base}/api/stats`)).json()).open_sse).toBe(1);
    await expect.poll(() => streams(server)).toBe(1);
  } finally {
    await server.stop();
  }
});

test('a tab that opens while messages stream in misses none of them', async ({ browser }) => {
  const server = await Server.start({ args: ['--publish-rate', '0'] });
  try {
    const ctx = await browser.newContext();
    const first = await ctx.newPage();
    await first.goto(server.base);
    await expect(first.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
    // Ten messages a second while the second tab loads, takes its snapshot and starts
    // following: what went by between its snapshot and its first relay must not be lost.
    let stop = false;
    const publishing = (async () => {
      for (let i = 0; !stop; i++) {
        await server.chat('ann', `m${i}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await first.waitForTimeout(500);
    const second = await ctx.newPage();
    await second.goto(server.base);
    await expect(second.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
    await second.waitForTimeout(1500);
    stop = true;
    await publishing;
    const all = (await history(server)).slice(-50);
    for (const p of [first, second]) {
      await expect.poll(async () => (await ids(p)).slice(-all.length)).toEqual(all);
    }
  } finally {
    await server.stop();
  }
});
