// The session's life against the real gate (idle timeout 3 s) and the
// chat example service: a dead connection replaced within the idle
// timeout, the gate's limits kept on the client's side (size, requests in
// flight), timeouts and cancellation, connect() called twice, several
// listeners, resuming a saved session, logout, and a session that expires
// while the client is away.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';

import {
  GateClient,
  RequestError,
  RequestTimeout,
  RequestTooLarge,
  SessionEnded,
  login,
} from '../src/index.js';
import { open, sealKeys } from '../src/seal.js';
import { guard, startGate, startProxy, until } from './harness.mjs';

const IDLE_MS = 3000;
const decoder = new TextDecoder();

let gate;
before(async () => {
  gate = await startGate({ chat: true, config: `[gate]\nidle_timeout = "${IDLE_MS}ms"\n` });
});
after(async () => {
  await gate?.stop();
});

/**
 * A WebSocket class that records the session number of every request sent
 * (opening sealed ones with the keys of `record.secret`, which the test
 * sets to the ticket's), and counts sockets and sealed connections.
 */
function recording() {
  const record = { sessions: [], sockets: 0, sealed: 0, secret: null };
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      record.sockets += 1;
      this.handshaken = false;
      this.keys = null;
      this.sent = 0;
    }

    send(data) {
      if (!this.handshaken) {
        this.handshaken = true;
        const [, index, , ext = ''] = decoder.decode(data).split(':');
        if (ext.split(',').includes('seal=1')) {
          record.sealed += 1;
          this.keys = sealKeys(record.secret, index);
        }
      } else {
        const plain = this.keys ? open(this.keys.c2s, this.sent++, data) : data;
        assert.ok(plain, 'every sealed package opens with the connection\'s key');
        if (plain.length >= 4) {
          record.sessions.push(new DataView(plain.buffer, plain.byteOffset, plain.byteLength).getUint32(plain.length - 4));
        }
      }
      super.send(data);
    }
  }
  record.WebSocket = Recording;
  return record;
}

/** A Map with the Web Storage methods (what `sessionStorage` offers). */
function memoryStorage() {
  const map = new Map();
  return {
    map,
    getItem: (key) => map.get(key) ?? null,
    setItem: (key, value) => map.set(key, String(value)),
    removeItem: (key) => map.delete(key),
  };
}

/** The next `type` event of `client` (a failure guard, not a wait). */
function next(client, type, what = type) {
  return guard(
    what,
    new Promise((resolve) => {
      const off = client.on(type, (...args) => {
        off();
        resolve(args);
      });
    }),
  );
}

/** A player: logged in, connected, pushes and states recorded. */
async function player(user, { url = gate.gate, on = gate, record, ...options } = {}) {
  const ticket = await login({ url: on.login, user, password: 'password', WebSocket });
  if (record) {
    record.secret = ticket.secret;
    options.WebSocket = record.WebSocket;
  }
  const client = new GateClient({
    url,
    ticket,
    WebSocket,
    reconnectDelayMs: 20,
    maxReconnectDelayMs: 200,
    ...options,
  });
  const pushes = [];
  const states = [];
  const gaps = [];
  client.on('push', (content, seq) => pushes.push({ text: decoder.decode(content), seq }));
  client.on('gap', (n) => gaps.push(n));
  client.on('state', (state) => states.push(state));
  await guard(`${user} to connect`, client.connect());
  const subscribe = (listener) => {
    const offs = ['push', 'state', 'end'].map((type) => client.on(type, listener));
    return () => offs.forEach((off) => off());
  };
  return {
    ticket,
    client,
    pushes,
    states,
    gaps,
    until: (what, cond, ms) => until(`${user}: ${what}`, cond, subscribe, ms),
    said: (line) => pushes.filter((p) => p.text === line).length,
  };
}

test('a dead connection is replaced within the idle timeout, nothing lost or run twice', async (t) => {
  const proxy = await startProxy(gate.gateAddr);
  try {
    const alice = await player('dead-alice');
    const bob = await player('dead-bob', { url: proxy.url });
    await alice.client.requestText('join dead-room');
    await bob.client.requestText('join dead-room');
    assert.equal(bob.client.welcome.idleMs, IDLE_MS, 'the welcome is there when connect() resolves');

    // The path to bob goes silent: TCP stays up, nothing reaches him.
    const reopened = next(bob.client, 'open', 'the new connection');
    proxy.stall();
    const stalled = Date.now();
    // Requests made meanwhile reach the gate and run; their answers are lost.
    const answers = [1, 2, 3].map((i) => bob.client.requestText(`say while dead ${i}`));
    await reopened;
    const recovery = Date.now() - stalled;
    t.diagnostic(`dead connection replaced in ${recovery} ms (gate idle timeout ${IDLE_MS} ms)`);
    assert.ok(recovery < IDLE_MS + 3000, `recovered in ${recovery} ms`);
    assert.equal(bob.client.index, 2);

    assert.deepEqual(await guard('the answers', Promise.all(answers)), ['sent', 'sent', 'sent']);
    await alice.client.requestText('say sync');
    await bob.until('sync', () => bob.said('[dead-room] dead-alice: sync') === 1);
    for (const i of [1, 2, 3]) {
      const line = `[dead-room] dead-bob: while dead ${i}`;
      assert.equal(alice.said(line), 1, `${line}: ran once`);
      assert.equal(bob.said(line), 1, `${line}: delivered once`);
    }
    assert.equal(bob.client.state, 'open');
    alice.client.close();
    bob.client.close();
  } finally {
    await proxy.close();
  }
});

test('an oversized request rejects at once, never sent, and the session goes on', async () => {
  const p = await player('big', { record: recording() });
  const { limits } = p.client;
  assert.deepEqual(limits, { maxInFlight: 128, maxRequestBytes: 65531 });
  await assert.rejects(p.client.request(new Uint8Array(70000)), (e) => e instanceof RequestTooLarge && e.size === 70000);
  await assert.rejects(p.client.request(new ArrayBuffer(65532)), RequestTooLarge);
  assert.equal(p.client.inFlight + p.client.queued, 0);
  // The largest request the gate takes goes through (the chat service
  // does not know the command: an error response, not a closed connection).
  await assert.rejects(p.client.request('x'.repeat(65531)), RequestError);
  assert.equal(await p.client.requestText('join big-room'), 'joined big-room (1 members)');
  assert.equal(p.client.index, 1, 'no reconnect');
  assert.deepEqual(p.states, ['connecting', 'open'], 'no reconnect');
  p.client.close();
});

test('1,000 pipelined requests: all answered, every push delivered, no reconnect', async () => {
  const p = await player('many');
  await p.client.requestText('join many-room');
  const answers = Array.from({ length: 1000 }, (_, i) => p.client.requestText(`say ${i}`));
  assert.equal(p.client.inFlight, 128, 'the gate limit in flight');
  assert.equal(p.client.queued, 872, 'the rest waits on the client');
  assert.deepEqual(await guard('1,000 answers', Promise.all(answers), 60000), Array(1000).fill('sent'));
  await p.until('1,000 pushes', () => p.said('[many-room] many: 999') === 1, 30000);
  const lines = p.pushes.map((x) => x.text).filter((x) => x.startsWith('[many-room]'));
  assert.deepEqual(lines, Array.from({ length: 1000 }, (_, i) => `[many-room] many: ${i}`));
  p.pushes.forEach((x, i) => assert.equal(x.seq, i + 1, 'sequence numbers without a hole'));
  assert.equal(p.client.index, 1, 'no reconnect');
  assert.deepEqual(p.states, ['connecting', 'open'], 'no reconnect');
  assert.deepEqual(p.gaps, []);
  assert.equal(p.client.inFlight, 0);
  p.client.close();
});

test('a request that times out or is aborted is never re-sent and its late answer is dropped', async () => {
  const proxy = await startProxy(gate.gateAddr);
  try {
    const record = recording();
    const alice = await player('slow-alice');
    const bob = await player('slow-bob', { url: proxy.url, record });
    await alice.client.requestText('join slow-room');
    await bob.client.requestText('join slow-room');

    // The network holds the answers: the request times out, then its
    // answer arrives late and is dropped.
    proxy.hold();
    await assert.rejects(bob.client.request('say late', { timeoutMs: 100 }), (e) => e instanceof RequestTimeout && e.timeoutMs === 100);
    const controller = new AbortController();
    const aborted = bob.client.request('say aborted', { signal: controller.signal });
    await alice.until('both lines', () => alice.said('[slow-room] slow-bob: aborted') === 1);
    controller.abort();
    await assert.rejects(aborted, (e) => e.name === 'AbortError');
    assert.equal(bob.client.inFlight, 2, 'they keep their place until their answers come');
    proxy.release();
    assert.equal(await bob.client.requestText('say after'), 'sent');
    assert.equal(bob.client.inFlight, 0, 'the late answers were taken and dropped');

    // Timed out, then the connection drops: not re-sent on the next one.
    proxy.hold();
    await Promise.all([
      assert.rejects(bob.client.request('say late 2', { timeoutMs: 100 }), RequestTimeout),
      alice.until('late 2', () => alice.said('[slow-room] slow-bob: late 2') === 1),
    ]);
    const reopened = next(bob.client, 'open', 'the reconnect');
    proxy.drop();
    proxy.restore();
    await reopened;
    // Already aborted: never sent at all.
    const gone = new AbortController();
    gone.abort();
    await assert.rejects(bob.client.request('say never', { signal: gone.signal }), (e) => e.name === 'AbortError');
    assert.equal(await bob.client.requestText('say sync'), 'sent');
    await alice.until('sync', () => alice.said('[slow-room] slow-bob: sync') === 1);
    for (const line of ['late', 'aborted', 'after', 'late 2']) {
      assert.equal(alice.said(`[slow-room] slow-bob: ${line}`), 1, `${line} ran once`);
    }
    assert.equal(alice.said('[slow-room] slow-bob: never'), 0);
    const counts = new Map();
    for (const s of record.sessions) counts.set(s, (counts.get(s) ?? 0) + 1);
    assert.deepEqual([...counts.values()].filter((n) => n > 1), [], 'no request sent twice');
    assert.ok(record.sessions.length >= 6 && record.sealed === record.sockets, 'all of it read from sealed packages');
    alice.client.close();
    bob.client.close();
  } finally {
    await proxy.close();
  }
});

test('connect() twice is one connection; several listeners; on/off', async () => {
  const record = recording();
  const ticket = await login({ url: gate.login, user: 'twice', password: 'password', WebSocket });
  record.secret = ticket.secret;
  const seen = { a: [], b: [], constructor: [] };
  const client = new GateClient({
    url: gate.gate,
    ticket,
    WebSocket: record.WebSocket,
    onPush: (content) => seen.constructor.push(decoder.decode(content)),
  });
  const first = client.connect();
  assert.equal(client.connect(), first, 'the same promise');
  await guard('connect', first);
  assert.equal(client.connect(), first);
  assert.equal(record.sockets, 1, 'one socket');
  assert.ok(client.welcome.idleMs > 0, 'the welcome is set when connect() resolves');
  const offA = client.on('push', (content) => seen.a.push(decoder.decode(content)));
  const b = (content) => seen.b.push(decoder.decode(content));
  client.on('push', b);
  const pushed = next(client, 'push');
  await client.requestText('join listen-room');
  await pushed;
  offA();
  client.off('push', b);
  const again = next(client, 'push');
  await client.requestText('say after off');
  await again;
  assert.equal(seen.a.length, 1);
  assert.equal(seen.b.length, 1);
  assert.equal(seen.constructor.length, 2);
  const ended = next(client, 'end');
  client.close();
  const [error] = await ended;
  assert.ok(error instanceof SessionEnded && error.reason === 'closed');
  await assert.rejects(client.connect(), (e) => e === error);
  await assert.rejects(client.request('x'), (e) => e === error);
});

test('a saved session resumes in a new client without a login; logout forgets it', async () => {
  const storage = memoryStorage();
  const first = await player('resumer', { storage });
  await first.client.requestText('join resume-room');
  await first.client.requestText('say one');
  await first.until('one', () => first.said('[resume-room] resumer: one') === 1);
  const saved = JSON.parse(storage.getItem('gatelogin.session'));
  assert.equal(saved.uid, 'resumer');
  assert.equal(saved.push, first.client.lastPush);
  // The page goes away without a word (its socket just closes).
  first.client.close();

  const record = recording();
  record.secret = first.ticket.secret;
  const second = GateClient.resume({ url: gate.gate, storage, WebSocket: record.WebSocket });
  assert.ok(second?.resumed);
  const pushes = [];
  second.on('push', (content) => pushes.push(decoder.decode(content)));
  await guard('the resumed connection', second.connect());
  assert.equal(second.index, first.client.index + 1);
  assert.equal(await second.requestText('say two'), 'sent', 'the session number is new: it ran');
  assert.ok(record.sessions[0] > 2, 'numbers of the earlier page are never reused');
  assert.equal(record.sealed, 1, 'the resumed connection is sealed');
  assert.equal(second.sealed, true);
  await until('two', () => pushes.includes('[resume-room] resumer: two'), (l) => second.on('push', l));
  assert.deepEqual(pushes, ['[resume-room] resumer: two'], 'pushes delivered before are not replayed');

  const ended = next(second, 'end');
  second.logout();
  const [error] = await ended;
  assert.equal(error.reason, 'logout');
  assert.equal(storage.getItem('gatelogin.session'), null);
  assert.equal(GateClient.resume({ url: gate.gate, storage, WebSocket }), null);
});

test('a session that expires while the client is away ends with its reason', async () => {
  const short = await startGate({ chat: true, config: '[gate]\nreconnect_window = "1s"\n' });
  const proxy = await startProxy(short.gateAddr);
  try {
    const storage = memoryStorage();
    const p = await player('expiring', { on: short, url: proxy.url, storage });
    await p.client.requestText('join away-room');
    proxy.drop();
    await p.until('the drop', () => p.client.state === 'reconnecting');
    const pending = p.client.request('say too late');
    const ended = next(p.client, 'end');
    await short.event('session ended', (f) => f.uid === 'expiring' && f.cause === 'expired');
    proxy.restore();
    const [error] = await ended;
    assert.ok(error instanceof SessionEnded);
    assert.equal(error.reason, 'expired');
    assert.match(error.detail, /^404/);
    await assert.rejects(pending, (e) => e === error, 'the pending request carries the reason');
    await assert.rejects(p.client.request('say later'), (e) => e === error, 'so does a later one');
    assert.equal(p.client.state, 'ended');
    assert.equal(storage.getItem('gatelogin.session'), null, 'nothing left to resume');
  } finally {
    await proxy.close();
    await short.stop();
  }
});
