// The x25519 login against the recorded transcripts of
// testdata/vectors (computed with pyca/cryptography, independent of this
// code): a WebSocket server plays the server's lines and checks the
// client's, byte for byte; then the gate handshake of the same login.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';

import { login } from '../src/index.js';
import { handshake } from '../src/gate.js';
import { text } from '../src/wire.js';

const hex = (s) => Uint8Array.from(s.match(/../g).map((b) => parseInt(b, 16)));
const vector = (name) =>
  JSON.parse(readFileSync(new URL(`../../../testdata/vectors/${name}.json`, import.meta.url)));

/** A server replaying `steps`: sends each S->C line, expects each C->S one. */
async function replay(steps) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => server.once('listening', resolve));
  const seen = [];
  server.on('connection', (ws) => {
    let at = 0;
    const next = () => {
      while (at < steps.length && steps[at].dir === 'S->C') {
        ws.send(steps[at].text.replace(/\n$/, ''));
        at += 1;
      }
    };
    ws.on('message', (data, isBinary) => {
      assert.equal(isBinary, false, 'lines are text messages');
      seen.push(data.toString());
      assert.equal(data.toString(), steps[at].text.replace(/\n$/, ''), `line ${at + 1}`);
      at += 1;
      next();
    });
    next();
  });
  return { url: `ws://127.0.0.1:${server.address().port}/`, seen, close: () => server.close() };
}

for (const [name, pinned, confirm] of [
  ['x25519_login', false, false],
  ['x25519_pinned_login', true, false],
  ['x25519_confirmed_login', true, true],
]) {
  test(`login replays ${name} byte for byte`, async () => {
    const v = vector(name);
    const server = await replay(v.steps);
    try {
      const ticket = await login({
        url: server.url,
        user: 'hello',
        password: 'password',
        server: 'sample',
        serverKey: pinned ? hex(v.values.static_public) : undefined,
        confirm,
        WebSocket,
        randomBytes: () => hex(v.values.client_private),
      });
      assert.equal(ticket.subid, v.values.subid);
      assert.deepEqual(ticket.secret, hex(v.values.gate_secret));
      assert.equal(server.seen.length, 3, 'key, proof, sealed token');
      if (v.gate_handshake) {
        const payload = handshake(ticket, 1);
        assert.equal(text(payload), v.gate_handshake.payload);
      }
    } finally {
      server.close();
    }
  });
}

test('a success the server does not prove is refused: missing, wrong or for another subid', async () => {
  const v = vector('x25519_confirmed_login');
  const confirmation = Buffer.from(hex(v.values.confirmation)).toString('base64');
  const wrong = hex(v.values.confirmation);
  wrong[0] ^= 1;
  for (const forged of [
    '200 Nw==',
    `200 Nw== ${Buffer.from(wrong).toString('base64')}`,
    `200 OA== ${confirmation}`,
    '200 Nw== !!!',
  ]) {
    const steps = v.steps.map((s, i) => (i === v.steps.length - 1 ? { ...s, text: `${forged}\n` } : s));
    const server = await replay(steps);
    try {
      await assert.rejects(
        login({
          url: server.url,
          user: 'hello',
          password: 'password',
          serverKey: hex(v.values.static_public),
          WebSocket,
          randomBytes: () => hex(v.values.client_private),
        }),
        (e) => e.message === 'the server could not prove its key',
        forged,
      );
    } finally {
      server.close();
    }
  }
});

test('a refused login rejects with its status', async () => {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => server.once('listening', resolve));
  server.on('connection', (ws) => {
    ws.send('obLD1OX2Bxg=');
    ws.once('message', () => ws.send('503 Service Unavailable'));
  });
  try {
    await assert.rejects(
      login({ url: `ws://127.0.0.1:${server.address().port}/`, user: 'u', password: 'p', WebSocket }),
      (e) => e.name === 'LoginError' && e.status === 503,
    );
  } finally {
    server.close();
  }
});
