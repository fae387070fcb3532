// The front-end dev loop as README "Front-end work" runs it: the app served by `trunk serve`
// (started by scripts/test.sh through scripts/dev.sh --trunk-only, on free ports) and a real
// server behind trunk's proxy. Skipped when trunk serve is not up (a plain
// `npx playwright test`).
import { test, expect } from '@playwright/test';
import { Server } from './server';
import { open, Transport } from './pages';

const UI = process.env.TIDINGS_DEV_UI ?? '';
const API_PORT = Number(process.env.TIDINGS_DEV_API_PORT ?? 0);

test.describe('front-end dev loop (trunk serve)', () => {
  test.skip(!UI, 'needs trunk serve: scripts/test.sh starts it (TIDINGS_DEV_UI)');

  test('goes live and receives an event on WebSocket, SSE and polling through trunk', async ({ browser }) => {
    // TIDINGS_DEV_FULL: scripts/dev.sh started the server too, with its own flags (the
    // dev loop exactly as a contributor runs it); otherwise start one as dev.sh would.
    const own = process.env.TIDINGS_DEV_FULL ? null : await Server.start({ port: API_PORT, args: ['--allow-origin', UI] });
    try {
      for (const t of ['ws', 'sse', 'poll-1000'] as Transport[]) {
        const page = await open(browser, UI, t, `dev-${t}`);
        const r = await fetch(`http://127.0.0.1:${API_PORT}/api/publish`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ stream: 'chat', data: { author: 'dev', body: `through trunk on ${t}` } }),
        });
        expect(r.status).toBe(201);
        const e = await r.json();
        await expect(page.locator(`[data-testid=chat-message][data-id="${e.id}"]`)).toBeVisible();
        await page.context().close();
      }
    } finally {
      await own?.stop();
    }
  });

  test('a WebSocket the server refuses says why on screen and backs off', async ({ browser }) => {
    // No --allow-origin: trunk's proxy forwards the page's origin, and the server refuses.
    const server = await Server.start({ port: API_PORT });
    try {
      const page = await (await browser.newContext()).newPage();
      const sockets: number[] = [];
      page.on('websocket', () => sockets.push(Date.now()));
      await page.goto(UI);
      await page.getByTestId('transport-ws').click();
      await expect(page.getByTestId('notice')).toContainText(`--allow-origin ${UI}`, { timeout: 20_000 });
      // Backing off: over the next 8 s, at most a few attempts (it was one a second, forever).
      const before = sockets.length;
      await page.waitForTimeout(8_000);
      expect(sockets.length - before).toBeLessThanOrEqual(3);
      // The other transports still work meanwhile.
      await page.getByTestId('transport-sse').click();
      await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
    } finally {
      await server.stop();
    }
  });
});
