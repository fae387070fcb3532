import { defineConfig } from '@playwright/test';

// Debian's Chromium (installed by scripts/setup.sh --test): Playwright's own browser
// download is not reachable here. The flags keep Chromium off the (closed) network.
export default defineConfig({
  testDir: './tests',
  timeout: 90_000,
  expect: { timeout: 15_000 },
  // Each test starts its own server(s); one worker keeps a 2-core machine predictable.
  workers: 1,
  reporter: [['list']],
  use: {
    browserName: 'chromium',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    },
    trace: 'retain-on-failure',
  },
});
