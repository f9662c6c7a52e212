// The library against the real gate binary over WebSocket, sealed (the
// default; requests as promises also plain): login, requests as promises,
// pushes between two players through the chat example service, reconnect
// after a dropped network (missed pushes exactly once, an unanswered
// request re-sent and answered from the cache without running twice), kick
// on relogin, the Origin allow-list.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';

import { GateClient, login } from '../src/index.js';
import { text } from '../src/wire.js';
import { guard, startGate, startProxy, until } from './harness.mjs';

let gate;
before(async () => {
  gate = await startGate({ chat: true, origins: ['http://game.example'] });
});
after(async () => {
  await gate?.stop();
});

/** A player: logged in, connected (through `url`), pushes recorded. */
async function player(user, url = gate.gate, options = {}) {
  const ticket = await login({ url: gate.login, user, password: 'password', WebSocket });
  const pushes = [];
  const kicks = [];
  const listeners = new Set();
  const changed = () => {
    for (const listener of listeners) listener();
  };
  const client = new GateClient({
    url,
    ticket,
    WebSocket,
    reconnectDelayMs: 20,
    maxReconnectDelayMs: 200,
    onPush: (content, seq) => {
      pushes.push({ text: text(content), seq });
      changed();
    },
    onKick: (reason) => {
      kicks.push(reason);
      changed();
    },
    onState: changed,
    ...options,
  });
  await guard(`${user} to connect`, client.connect());
  const subscribe = (listener) => {
    listeners.add(listener);
    return () => listeners.delete(listener);
  };
  return {
    client,
    pushes,
    kicks,
    /** Resolves once `cond()` holds (checked on every push, kick, state change). */
    until: (what, cond) => until(`${user}: ${what}`, cond, subscribe),
    said: (line) => pushes.filter((p) => p.text === line).length,
  };
}

for (const seal of [true, false]) {
  test(`requests are promises keyed by session number (${seal ? 'sealed' : 'plain'})`, async () => {
    const user = seal ? 'js-echo' : 'js-echo-plain';
    const room = `echo-room-${seal}`;
    const p = await player(user, gate.gate, { seal });
    assert.equal(p.client.sealed, seal);
    assert.equal(await p.client.requestText(`join ${room}`), `joined ${room} (1 members)`);
    // Pipelined: every answer goes to its own promise.
    const answers = await guard(
      'pipelined answers',
      Promise.all(Array.from({ length: 50 }, (_, i) => p.client.requestText(`say line ${i}`))),
    );
    assert.deepEqual(answers, Array(50).fill('sent'));
    await p.until('its own 50 lines', () => p.pushes.length >= 51);
    assert.deepEqual(
      p.pushes.slice(1).map((x) => x.text),
      Array.from({ length: 50 }, (_, i) => `[${room}] ${user}: line ${i}`),
    );
    // Sequence numbers count up by one.
    p.pushes.forEach((x, i) => assert.equal(x.seq, i + 1));
    assert.ok(p.client.welcome.idleMs > 0, 'the welcome names the idle timeout');
    // An error response rejects: leaving twice.
    assert.equal(await p.client.requestText('leave'), `left ${room}`);
    await assert.rejects(p.client.request('leave'), (e) => e.name === 'RequestError');
    assert.equal(p.client.index, 1);
    p.client.close();
  });
}

/**
 * `ws`'s WebSocket, counting the writes its socket makes (each one a system
 * call): how many frames leave together.
 */
class CountingWebSocket extends WebSocket {
  static writes = 0;
  static reads = 0;
  /** For each write, how many socket reads came before it. */
  static readsBefore = [];

  constructor(...args) {
    super(...args);
    this.once('open', () => {
      const socket = this._socket;
      // After ws's own listener, which hands the read's messages over.
      socket.on('data', () => CountingWebSocket.reads++);
      for (const name of ['_write', '_writev']) {
        const write = socket[name];
        socket[name] = function (...rest) {
          CountingWebSocket.writes++;
          CountingWebSocket.readsBefore.push(CountingWebSocket.reads);
          return write.apply(this, rest);
        };
      }
    });
  }
}

for (const seal of [true, false]) {
  test(`a turn's requests leave in one socket write, answers are copies (${seal ? 'sealed' : 'plain'})`, async () => {
    const user = seal ? 'js-burst' : 'js-burst-plain';
    const room = `burst-room-${seal}`;
    const p = await player(user, gate.gate, { seal, WebSocket: CountingWebSocket });
    assert.equal(await p.client.requestText(`join ${room}`), `joined ${room} (1 members)`);
    const before = CountingWebSocket.writes;
    const burst = Array.from({ length: 32 }, (_, i) => p.client.requestText(`say burst ${i}`));
    assert.equal(CountingWebSocket.writes, before, 'nothing is written before the turn ends');
    assert.deepEqual(await guard('the burst answered', Promise.all(burst)), Array(32).fill('sent'));
    assert.equal(CountingWebSocket.writes - before, 1, '32 requests, one write');
    // The gate read them as 32 messages, in order.
    await p.until('the 32 lines', () => p.pushes.length >= 33);
    assert.deepEqual(
      p.pushes.slice(1).map((x) => x.text),
      Array.from({ length: 32 }, (_, i) => `[${room}] ${user}: burst ${i}`),
    );
    // Answers and pushes are copies of their own, not views into the read
    // they came in (that would share it, and keep it alive).
    let pushed;
    const keep = (content) => {
      pushed = content;
    };
    p.client.on('push', keep);
    const own = await guard('two answers', Promise.all([0, 1].map((i) => p.client.request(`say own ${i}`))));
    await p.until('the two lines', () => p.pushes.length >= 35);
    p.client.off('push', keep);
    for (const content of [...own, pushed]) {
      assert.equal(text(content), content === pushed ? `[${room}] ${user}: own 1` : 'sent');
      assert.equal(content.byteOffset, 0);
      assert.equal(content.buffer.byteLength, content.byteLength);
    }
    // Each answer sends the next request from a promise reaction, and each
    // push one more from its listener, at once, inside the socket's read:
    // whatever one read sets off leaves in one write, never two.
    let chained = 0;
    const chain = async (n) => {
      for (let i = 0; i < n; i++) {
        assert.equal(await p.client.requestText(`say chain ${i}`), 'sent');
        chained++;
      }
    };
    let unknown = 0;
    const onPush = () => {
      unknown++;
      p.client.request('nop').catch(() => {});
    };
    p.client.on('push', onPush);
    const from = CountingWebSocket.readsBefore.length;
    await guard('eight chains', Promise.all(Array.from({ length: 8 }, () => chain(16))));
    p.client.off('push', onPush);
    assert.equal(chained, 128);
    assert.ok(unknown > 0, 'pushes sent requests from their listener');
    const readsBefore = CountingWebSocket.readsBefore.slice(from);
    assert.equal(
      new Set(readsBefore).size,
      readsBefore.length,
      `two writes after one read: reads before each write ${readsBefore.join(' ')}`,
    );
    p.client.close();
  });
}

test('pushes reach the other player, and a dropped network misses nothing', async () => {
  const proxy = await startProxy(gate.gateAddr);
  const alice = await player('js-alice');
  const bob = await player('js-bob', proxy.url);
  await alice.client.requestText('join room1');
  await bob.client.requestText('join room1');
  await alice.client.requestText('say hello');
  await bob.until('hello', () => bob.said('[room1] js-alice: hello') === 1);

  // Bob's network goes down: alice talks on.
  proxy.drop();
  await bob.until('noticing the drop', () => bob.client.state === 'reconnecting');
  for (const line of ['m1', 'm2', 'm3']) await alice.client.requestText(`say ${line}`);
  proxy.restore();
  await bob.until('m1..m3', () => bob.said('[room1] js-alice: m3') === 1);
  for (const line of ['hello', 'm1', 'm2', 'm3']) {
    assert.equal(bob.said(`[room1] js-alice: ${line}`), 1, `${line} exactly once`);
  }
  assert.equal(bob.client.state, 'open');
  assert.ok(bob.client.index >= 2, 'reconnected with a higher index');

  // A request whose answer is lost: the network keeps the request but
  // loses the answer, then drops. After the reconnect the request is
  // re-sent with its session number and answered from the gate's cache:
  // it ran once (alice hears it once).
  proxy.blackhole();
  const answer = bob.client.requestText('say only once');
  await alice.until('bob speaking', () => alice.said('[room1] js-bob: only once') === 1);
  proxy.drop();
  proxy.restore();
  assert.equal(await guard('the re-sent answer', answer), 'sent');
  await bob.until('its own line', () => bob.said('[room1] js-bob: only once') === 1);
  await alice.client.requestText('say sync');
  await bob.until('sync', () => bob.said('[room1] js-alice: sync') === 1);
  assert.equal(alice.said('[room1] js-bob: only once'), 1, 'the request ran once');
  assert.equal(bob.said('[room1] js-bob: only once'), 1);
  alice.client.close();
  bob.client.close();
  await proxy.close();
});

test('a relogin kicks the old session', async () => {
  const first = await player('js-twice');
  const pending = first.client.requestText('join kicked-room');
  assert.equal(await pending, 'joined kicked-room (1 members)');
  const second = await player('js-twice');
  await first.until('the kick', () => first.kicks.length === 1);
  assert.equal(first.kicks[0], 'logged in again');
  assert.equal(first.client.state, 'ended');
  assert.equal(first.client.ended.reason, 'kicked');
  assert.equal(first.client.ended.detail, 'logged in again');
  // Later requests carry the kick's reason.
  await assert.rejects(
    first.client.request('say x'),
    (e) => e.name === 'SessionEnded' && e.reason === 'kicked' && e.detail === 'logged in again',
  );
  assert.equal(await second.client.requestText('join kicked-room'), 'joined kicked-room (1 members)');
  second.client.close();
});

test('pages from origins not allowed are refused', async () => {
  const refused = new WebSocket(gate.gate, { origin: 'http://evil.example' });
  const status = await guard(
    'the refusal',
    new Promise((resolve) => refused.on('unexpected-response', (_, res) => resolve(res.statusCode))),
  );
  assert.equal(status, 403);
  const allowed = new WebSocket(gate.gate, { origin: 'http://game.example' });
  await guard('the upgrade', new Promise((resolve, reject) => {
    allowed.on('open', resolve);
    allowed.on('error', reject);
  }));
  allowed.close();
});

test('Node passes WebSocket options (here an Origin) to both connections', async () => {
  const webSocketOptions = { origin: 'http://game.example' };
  const ticket = await login({ url: gate.login, user: 'js-origin', password: 'password', WebSocket, webSocketOptions });
  const client = new GateClient({ url: gate.gate, ticket, WebSocket, webSocketOptions });
  await guard('connect', client.connect());
  assert.equal(await client.requestText('join origin-room'), 'joined origin-room (1 members)');
  client.close();
  // A page of another origin: the upgrade is refused, the first connection fails.
  const other = await login({ url: gate.login, user: 'js-origin', password: 'password', WebSocket });
  const refused = new GateClient({
    url: gate.gate,
    ticket: other,
    WebSocket,
    webSocketOptions: { origin: 'http://evil.example' },
  });
  await assert.rejects(guard('the refusal', refused.connect()), (e) => e.name === 'SessionEnded' && e.reason === 'unreachable');
});

test('a ticket the gate does not know is refused without retries', async () => {
  const ticket = await login({ url: gate.login, user: 'js-forged', password: 'password', WebSocket });
  const states = [];
  const forged = new GateClient({
    url: gate.gate,
    ticket: { ...ticket, secret: new Uint8Array(32) },
    WebSocket,
    onState: (state) => states.push(state),
  });
  await assert.rejects(
    guard('the refusal', forged.connect()),
    (e) => e.name === 'SessionEnded' && e.reason === 'refused' && /^401/.test(e.detail),
  );
  assert.equal(forged.state, 'ended');
  await assert.rejects(forged.request('say x'), (e) => e.name === 'SessionEnded');
  // An unknown session: 404, and the client is closed, not retrying.
  const unknown = new GateClient({ url: gate.gate, ticket: { ...ticket, subid: '999999' }, WebSocket });
  await assert.rejects(guard('the refusal', unknown.connect()), /404/);
  assert.equal(unknown.state, 'ended');
  assert.deepEqual(states, ['connecting', 'ended']);
});
