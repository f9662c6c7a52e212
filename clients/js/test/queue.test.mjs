// The login queue seen from the library: with the gate admitting one
// login per second, logins that ask for queue notices hear their place
// before line 3, and all of them get in.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';

import { login } from '../src/index.js';
import { guard, startGate } from './harness.mjs';

let gate;
before(async () => {
  gate = await startGate({ config: '[login]\nadmission_rate = 2\nadmission_burst = 1\n' });
});
after(async () => {
  await gate?.stop();
});

test('queued logins hear their place and all get in', async () => {
  const notices = [[], [], []];
  const tickets = await guard(
    'three queued logins',
    Promise.all(
      notices.map((seen, i) =>
        login({
          url: gate.login,
          user: `js-queued-${i}`,
          password: 'password',
          WebSocket,
          onQueue: (notice) => seen.push(notice),
        }),
      ),
    ),
  );
  assert.deepEqual(
    tickets.map((t) => t.uid),
    ['js-queued-0', 'js-queued-1', 'js-queued-2'],
  );
  const heard = notices.flat();
  assert.ok(heard.length >= 1, 'at least one login waited and was told so');
  for (const notice of heard) {
    assert.ok(Number.isInteger(notice.position) && notice.position >= 0);
    assert.ok(Number.isInteger(notice.waitMs) && notice.waitMs >= 0);
    assert.ok(Number.isInteger(notice.number) && notice.number >= 1);
  }
});
