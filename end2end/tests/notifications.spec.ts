// Accounts and notifications in the browser (issue 10): sign up in the app, a mention rings
// the bell on every transport, read state is shared by an account's tabs, and another account
// never sees it.
import { test, expect, Browser, Page } from '@playwright/test';
import { Server } from './server';
import { open, send, Transport } from './pages';

/** Signs up through the app's own form; the page starts again signed in. */
async function signUp(page: Page, name: string) {
  await page.getByTestId('sign-in-open').click();
  await page.getByTestId('sign-in-name').fill(name);
  await page.getByTestId('sign-in-password').fill('correct horse');
  await page.getByTestId('sign-up-submit').click();
  await expect(page.getByTestId('bell')).toBeVisible();
  await expect(page.getByTestId('conn-state')).toHaveAttribute('data-state', 'live');
}

async function openSignedUp(browser: Browser, base: string, transport: Transport, name: string) {
  const page = await open(browser, base, transport, name);
  await signUp(page, name);
  // The transport choice is kept across the reload that starts the signed-in page.
  await expect(page.getByTestId(`transport-${transport}`)).toHaveClass(/active/);
  return page;
}

/** Another tab of the same browser (signed in: it shares the cookie and follows the
 * first tab's connection). */
async function secondTab(page: Page, base: string) {
  const tab = await page.context().newPage();
  await tab.goto(base);
  await expect(tab.getByTestId('bell')).toBeVisible();
  return tab;
}

test('a mention rings the bell on every transport, for its account only', async ({ browser }) => {
  const server = await Server.start();
  try {
    const ann = await openSignedUp(browser, server.base, 'ws', 'ann');
    const eve = await openSignedUp(browser, server.base, 'sse', 'eve');
    const transports: Transport[] = ['ws', 'sse', 'longpoll', 'poll-1000'];
    const delays: string[] = [];
    for (const [i, t] of transports.entries()) {
      const name = `bob${i}`;
      const bob = await openSignedUp(browser, server.base, t, name);
      await expect(bob.getByTestId('unread')).toHaveText('0');
      const sent = Date.now();
      await send(ann, `hello @${name}, look at this`);
      await expect(bob.getByTestId('unread')).toHaveText('1');
      delays.push(`${t} ${Date.now() - sent} ms`);
      await bob.getByTestId('bell').click();
      await expect(bob.getByTestId('notice-item')).toHaveText([/ann mentioned you: hello @bob\d, look at this/]);
      await bob.context().close();
    }
    console.log(`mention to bell: ${delays.join(', ')}`);
    // Ann's own message is marked with her verified name; Eve was never notified.
    await expect(eve.getByTestId('unread')).toHaveText('0');
    await eve.getByTestId('bell').click();
    await expect(eve.getByTestId('notice-item')).toHaveCount(0);
    for (const p of [ann, eve]) expect((p as any).consoleErrors).toEqual([]);
  } finally {
    await server.stop();
  }
});

test('read state is the account’s: marked in one tab, the other tab’s count drops', async ({ browser }) => {
  const server = await Server.start();
  try {
    const ann = await openSignedUp(browser, server.base, 'ws', 'ann');
    const bob = await openSignedUp(browser, server.base, 'sse', 'bob');
    const bob2 = await secondTab(bob, server.base);
    await send(ann, '@bob first');
    await send(ann, '@bob second');
    for (const p of [bob, bob2]) await expect(p.getByTestId('unread')).toHaveText('2');
    await bob.getByTestId('bell').click();
    await bob.getByTestId('mark-read').first().click();
    for (const p of [bob, bob2]) await expect(p.getByTestId('unread')).toHaveText('1');
    await bob.getByTestId('mark-all-read').click();
    for (const p of [bob, bob2]) await expect(p.getByTestId('unread')).toHaveText('0');
    // A reload keeps it: the marks are in the account's history.
    await bob2.reload();
    await expect(bob2.getByTestId('unread')).toHaveText('0');
    // Signing out in one tab signs out both.
    await bob.getByTestId('sign-out').click();
    for (const p of [bob, bob2]) await expect(p.getByTestId('sign-in-open')).toBeVisible();
  } finally {
    await server.stop();
  }
});

test('a price alert set in the panel fires once per crossing', async ({ browser }) => {
  const server = await Server.start();
  try {
    await server.publish('ticker', { symbol: 'ZZZ', price: 9.5, change: 0 });
    const bob = await openSignedUp(browser, server.base, 'ws', 'bob');
    await expect(bob.locator('[data-testid=tick][data-symbol=ZZZ]')).toBeVisible();
    await bob.getByTestId('bell').click();
    await bob.getByTestId('alert-symbol').selectOption('ZZZ');
    await bob.getByTestId('alert-op').selectOption('above');
    await bob.getByTestId('alert-price').fill('10');
    await bob.getByTestId('alert-add').click();
    await expect(bob.getByTestId('alert-rule')).toHaveText([/ZZZ above 10/]);
    // A bad level is refused in words.
    await bob.getByTestId('alert-price').fill('-3');
    await bob.getByTestId('alert-add').click();
    await expect(bob.getByTestId('alert-error')).toHaveText('Price must be a finite number greater than 0');
    for (const price of [11, 12, 9, 10.5]) {
      await server.publish('ticker', { symbol: 'ZZZ', price, change: 0 });
      await expect(bob.locator('[data-testid=tick][data-symbol=ZZZ] .price')).toHaveText(price.toFixed(2));
    }
    // 11 fired, 12 did not (still above), 9 armed it again, 10.5 fired.
    await expect(bob.getByTestId('notice-item')).toHaveText([/ZZZ is above 10 \(now 10\.50\)/, /ZZZ is above 10 \(now 11\.00\)/]);
    await expect(bob.getByTestId('unread')).toHaveText('2');
  } finally {
    await server.stop();
  }
});

test('the sign-in form says what is wrong', async ({ browser }) => {
  const server = await Server.start();
  try {
    const page = await open(browser, server.base, 'ws', 'x');
    await page.getByTestId('sign-in-open').click();
    await page.getByTestId('sign-in-name').fill('nobody');
    await page.getByTestId('sign-in-password').fill('whatever pw');
    await page.getByTestId('sign-in-submit').click();
    await expect(page.getByTestId('sign-in-error')).toHaveText('wrong name or password');
    await page.getByTestId('sign-in-password').fill('short');
    await page.getByTestId('sign-up-submit').click();
    await expect(page.getByTestId('sign-in-error')).toHaveText('A password is at least 8 characters');
  } finally {
    await server.stop();
  }
});

test('presence: who is online in chat, each account once, and gone when its pages close', async ({ browser }) => {
  const server = await Server.start();
  try {
    const ann = await openSignedUp(browser, server.base, 'ws', 'ann');
    const bob = await openSignedUp(browser, server.base, 'sse', 'bob');
    // Bob's second tab (the same browser: it follows the first tab's connection) and a
    // visitor who is not signed in, on long polling.
    const bob2 = await secondTab(bob, server.base);
    const visitor = await open(browser, server.base, 'longpoll', 'cat');
    for (const p of [ann, bob, bob2, visitor]) {
      await expect(p.getByTestId('online')).toHaveText('2 online: ann, bob');
    }
    // Bob closes his browser: everyone else sees him go (the server's grace is 2 s).
    const closed = Date.now();
    await bob.context().close();
    for (const p of [ann, visitor]) {
      await expect(p.getByTestId('online')).toHaveText('1 online: ann', { timeout: 10_000 });
    }
    console.log(`presence: bob gone from the list ${Date.now() - closed} ms after his pages closed`);
    // A reload is not a leave: the visitor's list never loses Ann (every text it shows is
    // recorded), also past the grace.
    await visitor.evaluate(() => {
      const el = document.querySelector('[data-testid=online]')!;
      const seen: string[] = [];
      (window as any).onlineSeen = seen;
      new MutationObserver(() => seen.push(el.textContent ?? '')).observe(el, {
        subtree: true, childList: true, characterData: true,
      });
    });
    await ann.reload();
    await expect(ann.getByTestId('online')).toHaveText('1 online: ann');
    await visitor.waitForTimeout(3_500);
    const seen: string[] = await visitor.evaluate(() => (window as any).onlineSeen);
    expect(seen.filter((t) => t !== '1 online: ann')).toEqual([]);
    await expect(visitor.getByTestId('online')).toHaveText('1 online: ann');
    for (const p of [ann, visitor]) expect((p as any).consoleErrors).toEqual([]);
  } finally {
    await server.stop();
  }
});
