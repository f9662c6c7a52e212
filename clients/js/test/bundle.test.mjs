// The bundled file (`npm run build`: dist/gatelogin.js, made by esbuild,
// @noble included): within its size budget gzipped, self-contained, the
// same exports as the sources, and working against the real gate.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { WebSocket } from 'ws';

import * as sources from '../src/index.js';
import { guard, startGate } from './harness.mjs';

const file = new URL('../dist/gatelogin.js', import.meta.url);
/** The budget: 20 KB gzipped, the crypto included. */
const BUDGET = 20_000;

test('the bundle is within 20 KB gzipped and imports nothing', (t) => {
  const code = readFileSync(file);
  const gzipped = gzipSync(code, { level: 9 }).length;
  t.diagnostic(`dist/gatelogin.js: ${code.length} bytes, ${gzipped} gzipped`);
  assert.ok(gzipped <= BUDGET, `${gzipped} bytes gzipped, over ${BUDGET}`);
  assert.doesNotMatch(code.toString(), /\bimport\s*[("'{*]/, 'no import left');
});

test('the bundle exports what the sources do and works against the gate', async () => {
  const bundle = await import(file);
  assert.deepEqual(Object.keys(bundle).sort(), Object.keys(sources).sort());
  const gate = await startGate();
  try {
    const ticket = await bundle.login({ url: gate.login, user: 'js-bundle', password: 'password', WebSocket });
    const client = new bundle.GateClient({ url: gate.gate, ticket, WebSocket });
    await guard('connect', client.connect());
    assert.equal(await client.requestText('from the bundle'), 'from the bundle');
    await assert.rejects(client.request(new Uint8Array(65532)), bundle.RequestTooLarge);
    client.close();
  } finally {
    await gate.stop();
  }
});
