import { test, expect, Page } from '@playwright/test';
import { ClusterSetup } from './server';
import { open, send } from './pages';

test('browsers on three transports chat through nginx round robin over three servers', async ({ browser }) => {
  const cluster = await ClusterSetup.start(3);
  try {
    const ws = await open(browser, cluster.base, 'ws', 'wanda');
    const poll = await open(browser, cluster.base, 'poll-1000', 'paul');
    const sse = await open(browser, cluster.base, 'sse', 'sara');
    const lines: string[] = [];
    for (let i = 0; i < 3; i++) {
      for (const [page, who] of [[ws, 'ws'], [poll, 'poll'], [sse, 'sse']] as [Page, string][]) {
        const text = `${who} says ${i}`;
        lines.push(text);
        await send(page, text);
        // Wait for it to be stored before the next one, so the expected order is known.
        await expect(page.getByTestId('chat-outgoing').filter({ hasText: 'sending' })).toHaveCount(0);
      }
    }
    for (const page of [ws, poll, sse]) {
      await expect(page.getByTestId('chat-message').locator('.body')).toHaveText(lines);
    }
    // Whichever server a request landed on, they all hold the same log.
    for (const s of cluster.servers) {
      const r = await (await fetch(`${s.base}/api/history?stream=chat&limit=200`)).json();
      expect(r.events.map((e: any) => e.data.body)).toEqual(lines);
    }
  } finally {
    await cluster.stop();
  }
});
