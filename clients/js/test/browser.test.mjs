// The chat page in a real browser: headless Chromium (Debian's `chromium`,
// or CHROMIUM=path) driven over the DevTools protocol by puppeteer-core.
// Two pages log in through the gate's WebSocket listeners and join a room
// of the chat example service; one speaks, the other sees the push. Then
// the second page's network (a TCP proxy in front of the gate) is dropped,
// the first says three more lines, the network comes back, and the second
// page shows each line it missed exactly once. A screenshot of that page is
// written to test-output/chat.png.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

import { serve } from '../demo/serve.mjs';
import { startGate, startProxy } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const output = path.join(here, '..', 'test-output');
const chromium = process.env.CHROMIUM ?? '/usr/bin/chromium';

let web;
let gate;
let proxy;
let browser;
let profile;

before(async () => {
  if (!existsSync(chromium)) {
    throw new Error(`no browser at ${chromium}: install Debian's chromium or set CHROMIUM`);
  }
  web = await serve(0);
  const origin = `http://127.0.0.1:${web.address().port}`;
  gate = await startGate({ chat: true, origins: [origin] });
  proxy = await startProxy(gate.gateAddr);
  profile = mkdtempSync(path.join(tmpdir(), 'chromium-profile-'));
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    userDataDir: profile,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Two pages at once: the one in the background must not be slowed.
      '--disable-background-timer-throttling',
      '--disable-backgrounding-occluded-windows',
      '--disable-renderer-backgrounding',
    ],
  });
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await gate?.stop();
  await new Promise((resolve) => (web ? web.close(resolve) : resolve()));
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** Opens the chat page as `user`, its gate connection through `gateUrl`. */
async function openPage(user, gateUrl) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  const query = new URLSearchParams({ login: gate.login, gate: gateUrl, user });
  await page.goto(`http://127.0.0.1:${web.address().port}/demo/?${query}`);
  await page.click('#login');
  await page.waitForSelector('body[data-state="open"]', { timeout: 15000 });
  await page.click('#join');
  await page.waitForSelector('body[data-joined="lobby"]', { timeout: 15000 });
  return { page, errors };
}

/** Types a line into the page and waits until its own push shows it. */
async function say(page, user, line) {
  await page.bringToFront();
  await page.type('#text', line);
  await page.click('#say');
  await waitLine(page, `[lobby] ${user}: ${line}`);
}

function waitLine(page, line) {
  return page.waitForFunction(
    (l) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent === l),
    { timeout: 15000, polling: 50 },
    line,
  );
}

function count(page, line) {
  return page.$$eval('#messages li', (items, l) => items.filter((li) => li.textContent === l).length, line);
}

test('two pages chat, and a page whose network drops misses nothing', async () => {
  mkdirSync(output, { recursive: true });
  const alice = await openPage('alice', gate.gate);
  const bob = await openPage('bob', proxy.url);

  await say(alice.page, 'alice', 'hello bob');
  await waitLine(bob.page, '[lobby] alice: hello bob');

  // Bob's network goes down; alice goes on talking.
  proxy.drop();
  await bob.page.waitForSelector('body[data-state="reconnecting"]', { timeout: 15000 });
  for (const line of ['are you there?', 'second line', 'third line']) {
    await say(alice.page, 'alice', line);
  }
  proxy.restore();
  await bob.page.waitForSelector('body[data-state="open"]', { timeout: 15000 });
  await waitLine(bob.page, '[lobby] alice: third line');
  await say(bob.page, 'bob', 'back again');
  await waitLine(alice.page, '[lobby] bob: back again');

  for (const line of ['hello bob', 'are you there?', 'second line', 'third line']) {
    assert.equal(await count(bob.page, `[lobby] alice: ${line}`), 1, `"${line}" exactly once`);
  }
  assert.equal(await count(alice.page, '[lobby] bob: back again'), 1);
  await bob.page.screenshot({ path: path.join(output, 'chat.png') });
  assert.deepEqual([...alice.errors, ...bob.errors], [], 'no script errors on the pages');
});
