// The login queue and the heartbeat seen from the library. With the gate
// admitting two logins per second, logins that ask for queue notices hear
// their place before line 3, and all of them get in. With a short idle
// timeout, the heartbeats keep a quiet connection open, sealed or plain.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';

import { GateClient, login } from '../src/index.js';
import { guard, startGate, until } from './harness.mjs';

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

for (const seal of [true, false]) {
  test(`heartbeats keep an idle ${seal ? 'sealed' : 'plain'} connection open past the idle timeout`, async () => {
    const idle = await startGate({ config: '[gate]\nidle_timeout = "600ms"\n' });
    try {
      // Counts the heartbeats sent and their answers: empty packages, which
      // sealed are a tag alone (16 bytes; anything else sealed is longer).
      const empty = seal ? 16 : 0;
      const counts = { sent: 0, answered: 0 };
      const listeners = new Set();
      class CountingSocket extends WebSocket {
        constructor(...args) {
          super(...args);
          this.addEventListener('message', (event) => {
            if (event.data.byteLength === empty) {
              counts.answered += 1;
              for (const listener of listeners) listener();
            }
          });
        }

        send(data) {
          if (data.length === empty) counts.sent += 1;
          super.send(data);
        }
      }
      const ticket = await login({ url: idle.login, user: 'js-idle', password: 'password', WebSocket });
      const client = new GateClient({ url: idle.gate, ticket, WebSocket: CountingSocket, seal });
      await guard('connect', client.connect());
      assert.equal(client.sealed, seal);
      // Five answered heartbeats span more than the 600 ms idle timeout.
      await until(
        'five answered heartbeats',
        () => counts.answered >= 5,
        (listener) => {
          listeners.add(listener);
          return () => listeners.delete(listener);
        },
      );
      assert.ok(counts.sent >= counts.answered);
      assert.equal(client.welcome.idleMs, 600);
      assert.equal(client.index, 1, 'still the first connection');
      assert.equal(client.state, 'open');
      assert.equal(client.tampered, 0);
      assert.equal(await client.requestText('still here'), 'still here');
      client.close();
    } finally {
      await idle.stop();
    }
  });
}
