// The chat page in a real browser: headless Chromium (Debian's `chromium`,
// or CHROMIUM=path) driven over the DevTools protocol by puppeteer-core.
// Two pages log in through the gate's WebSocket listeners and join a room
// of the chat example service; one speaks, the other sees the push. Then
// the second page's network (a TCP proxy in front of the gate) is dropped,
// the first says three more lines, the network comes back, and the second
// page shows each line it missed exactly once. A screenshot of that page is
// written to test-output/chat.png. The pages' WebSocket frames, read over
// the DevTools protocol, show every gate connection sealed: handshakes
// asking for it, and no chat line in any gate message either way. Then,
// with two other pages: one page's
// path goes silent (TCP up, nothing forwarded) and it is back on a new
// connection within the gate's idle timeout; that page is reloaded while
// its network is down and resumes its session without a login, showing the
// line it missed once and none it had shown before.

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
const IDLE_MS = 3000;

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
  gate = await startGate({ chat: true, origins: [origin], config: `[gate]\nidle_timeout = "${IDLE_MS}ms"\n` });
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
  // Every WebSocket frame of the page, as the browser sent or got it.
  const frames = [];
  const cdp = await page.createCDPSession();
  await cdp.send('Network.enable');
  for (const [event, dir] of [
    ['Network.webSocketFrameSent', 'sent'],
    ['Network.webSocketFrameReceived', 'received'],
  ]) {
    cdp.on(event, ({ requestId, response }) => {
      // Binary frames' payloads come base64-encoded, text frames' as text.
      const binary = response.opcode === 2;
      frames.push({ socket: requestId, dir, binary, data: binary ? Buffer.from(response.payloadData, 'base64') : response.payloadData });
    });
  }
  const query = new URLSearchParams({ login: gate.login, gate: gateUrl, user });
  await page.goto(`http://127.0.0.1:${web.address().port}/demo/?${query}`);
  await page.click('#login');
  await page.waitForSelector('body[data-state="open"]', { timeout: 15000 });
  await page.click('#join');
  await page.waitForSelector('body[data-joined="lobby"]', { timeout: 15000 });
  return { page, errors, frames };
}

/**
 * The gate connections in `frames` (sockets of binary frames): each one's
 * handshake asks for the sealed channel, and `lines` appear in none of
 * their frames (the handshake and the plain status aside, nothing is
 * readable). Returns how many there were.
 */
function assertSealed(frames, lines) {
  const sockets = new Map();
  for (const frame of frames.filter((f) => f.binary)) {
    if (!sockets.has(frame.socket)) sockets.set(frame.socket, []);
    sockets.get(frame.socket).push(frame);
  }
  for (const socket of sockets.values()) {
    const [hello] = socket.filter((f) => f.dir === 'sent');
    assert.match(hello.data.toString('latin1'), /:v=1,push=\d+,seal=1$/, 'the handshake asks for the sealed channel');
    for (const frame of socket) {
      for (const line of lines) assert.ok(!frame.data.includes(line), `"${line}" readable in a ${frame.dir} frame`);
    }
  }
  return sockets.size;
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
  const said = ['hello bob', 'are you there?', 'second line', 'third line', 'back again'];
  assert.equal(assertSealed(alice.frames, said), 1, "alice's one gate connection, sealed");
  assert.ok(assertSealed(bob.frames, said) >= 2, "bob's gate connections, the reconnect too, sealed");
  await bob.page.screenshot({ path: path.join(output, 'chat.png') });
  assert.deepEqual([...alice.errors, ...bob.errors], [], 'no script errors on the pages');
});

test('a silent connection is replaced within the idle timeout; a reloaded page resumes its session', async (t) => {
  const second = await startProxy(gate.gateAddr);
  try {
    const carol = await openPage('carol', gate.gate);
    const dave = await openPage('dave', second.url);
    await say(carol.page, 'carol', 'hello dave');
    await waitLine(dave.page, '[lobby] carol: hello dave');

    // Dave's path goes silent: the page is on a new connection within the
    // idle timeout (plus the time to notice), not after a close handshake.
    second.stall();
    const stalled = Date.now();
    await dave.page.waitForSelector('body[data-connections="2"][data-state="open"]', { timeout: 15000 });
    const recovery = Date.now() - stalled;
    t.diagnostic(`Chromium: dead connection replaced in ${recovery} ms (gate idle timeout ${IDLE_MS} ms)`);
    assert.ok(recovery < IDLE_MS + 3000, `recovered in ${recovery} ms`);

    // Dave's network drops, carol speaks, dave's page is reloaded, then
    // the network comes back: the page resumes the session (no login).
    second.drop();
    await dave.page.waitForSelector('body[data-state="reconnecting"]', { timeout: 15000 });
    await say(carol.page, 'carol', 'while you reload');
    await dave.page.reload();
    second.restore();
    await dave.page.waitForSelector('body[data-resumed="yes"][data-state="open"]', { timeout: 15000 });
    await waitLine(dave.page, '[lobby] carol: while you reload');
    await say(dave.page, 'dave', 'back after reload');
    await waitLine(carol.page, '[lobby] dave: back after reload');
    assert.equal(await count(dave.page, '[lobby] carol: while you reload'), 1, 'the missed line once');
    assert.equal(await count(dave.page, '[lobby] carol: hello dave'), 0, 'lines shown before are not replayed');
    const logins = gate.logs
      .map((line) => {
        try {
          return JSON.parse(line).fields ?? {};
        } catch {
          return {};
        }
      })
      .filter((f) => f.message === 'login' && f.uid === 'dave' && f.suite !== undefined);
    assert.equal(logins.length, 1, 'one login dialogue');

    // Logging out forgets the session: a reload shows the login form.
    await dave.page.click('#logout');
    await dave.page.waitForSelector('body[data-state="ended"]', { timeout: 15000 });
    await dave.page.reload();
    await dave.page.waitForSelector('#login-form:not([hidden])', { timeout: 15000 });
    assert.equal(await dave.page.evaluate(() => document.body.dataset.resumed), undefined);
    assert.deepEqual([...carol.errors, ...dave.errors], [], 'no script errors on the pages');
  } finally {
    await second.close();
  }
});
