// What the specs do with a page, written once: open the app on a transport, send a chat line.
import { expect, Browser, BrowserContext, Page } from '@playwright/test';

export type Transport = 'poll-1000' | 'poll-5000' | 'poll-30000' | 'longpoll' | 'sse' | 'ws';

/** Opens the app in a fresh browser context (its own storage) on `transport`, live, with
 *  the nickname set. Console errors are collected on `page.consoleErrors`. */
export async function open(browser: Browser, url: string, transport: Transport, nick: string): Promise<Page> {
  const ctx: BrowserContext = await browser.newContext();
  const page = await ctx.newPage();
  const errors: string[] = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  (page as any).consoleErrors = errors;
  await page.goto(url);
  await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
  await page.getByTestId(`transport-${transport}`).click();
  await expect(page.getByTestId(`transport-${transport}`)).toHaveClass(/active/);
  await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
  await page.getByTestId('nick').fill(nick);
  return page;
}

export async function send(page: Page, text: string) {
  await page.getByTestId('chat-input').fill(text);
  await page.getByTestId('chat-send').click();
}
