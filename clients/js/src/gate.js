// The gate client over WebSocket (docs/PROTOCOL.md sections 3 to 5 and 9):
// each package is one binary message. One GateClient is one login session:
// it handshakes (opted in to the extensions), turns requests into promises
// keyed by session number, delivers pushes and kicks, sends heartbeats,
// keeps the gate's limits on its own side (request size, requests in
// flight), and when the connection drops or goes silent it reconnects with
// the next index, re-sends every unanswered request with its session number
// (the gate answers those from its cache: nothing runs twice) and asks for
// the pushes after the last one it delivered (each is delivered once).
// Unless told not to, it asks for the sealed channel (section 3.2): every
// package after the handshake's status is sealed both ways, and one from
// the gate that fails to open costs its connection, replaced as a dropped
// one is.

import { sha256 } from '@noble/hashes/sha2.js';
import { hmac } from '@noble/hashes/hmac.js';

import { RequestError, RequestTimeout, RequestTooLarge, SessionEnded } from './errors.js';
import { open, seal, sealKeys } from './seal.js';
import {
  Flag,
  b64decode,
  b64encode,
  bytes,
  encodeRequest,
  parseFields,
  parseResponse,
  text,
  webSocketClass,
} from './wire.js';

/** The gate's limits a client keeps (docs/PROTOCOL.md sections 4 and 8). */
export const DEFAULT_LIMITS = Object.freeze({
  /** `gate.max_inflight_per_user`: one more closes the connection (1008). */
  maxInFlight: 128,
  /** A request's content: a package is at most 65535 bytes, 4 of them the session number. */
  maxRequestBytes: 65531,
});

const DEFAULT_STORAGE_KEY = 'gatelogin.session';

/**
 * Runs `fn` (Node) once this turn's promise reactions have all run: a
 * microtask queues it as a tick, and Node runs the ticks queued by
 * microtasks only once the microtask queue is empty. (A tick queued at
 * once would run before the reactions when called from an I/O callback.)
 */
const afterTurn = (fn) => queueMicrotask(() => globalThis.process.nextTick(fn));

/**
 * With Node's `ws` package, whose socket is a `net.Socket`: the frames sent
 * on `conn` during this turn of the event loop leave in one socket write,
 * the socket corked until the turn's promise reactions have run. A batch of
 * requests (a pipelined burst, the answers of one read each sending the
 * next, the re-sends after a reconnect) then costs one system call here and
 * one read at the gate instead of one each. Nothing is delayed past the
 * turn. A browser's WebSocket has no socket to cork and writes frames as it
 * sees fit.
 */
function holdWrites(conn) {
  const socket = conn.ws._socket;
  if (conn.held || typeof socket?.cork !== 'function') return;
  conn.held = true;
  socket.cork();
  afterTurn(() => {
    conn.held = false;
    socket.uncork();
  });
}

/** Session numbers a saved state reserves ahead, so a resumed page never reuses one. */
const RESERVE = 256;
/** Ends after which a saved state is of no use. */
const FORGET = new Set(['kicked', 'expired', 'refused', 'logout']);
const RESUMED = Symbol('resumed');
const EMPTY = new Uint8Array(0);
const noop = () => {};

/** The gate username `b64(uid) "@" b64(server) "#" b64(subid)`. */
export function username(ticket) {
  return `${b64encode(bytes(ticket.uid))}@${b64encode(bytes(ticket.server))}#${b64encode(bytes(ticket.subid))}`;
}

/**
 * The handshake payload for `index`: `username:index:b64(mac):ext`, the MAC
 * HMAC-SHA256 keyed with the login's gate secret over `username:index`, or
 * over `username:index:seal` when `ext` asks for the sealed channel.
 */
export function handshake(ticket, index, ext) {
  const signed = `${username(ticket)}:${index}`;
  const sealed = !!ext && parseFields(ext).seal === '1';
  const mac = hmac(sha256, ticket.secret, bytes(sealed ? `${signed}:seal` : signed));
  return bytes(ext ? `${signed}:${b64encode(mac)}:${ext}` : `${signed}:${b64encode(mac)}`);
}

/** Reports an exception thrown by a listener without stopping the client. */
function report(error) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
  else setTimeout(() => {
    throw error;
  });
}

/**
 * One login session on the gate, over WebSocket. See README.md for the
 * options, events, errors and the reconnect and resume rules.
 */
export class GateClient {
  #url;
  #ticket;
  #WS;
  #wsOptions;
  #opts;
  #limits;
  #storage;
  #storageKey;
  #state = 'idle';
  #index = 0;
  #lastPush = 0;
  #nextSession = 1;
  #reserved = 1;
  #welcome = null;
  #ended = null;
  #resumed = false;
  #everOpened = false;
  #tampered = 0;
  /** The last connection was lost to a package that failed to open. */
  #suspect = false;
  #listeners = new Map();
  /** Requests waiting for a place in flight, in order. */
  #queue = [];
  /** session -> request: numbered and unanswered (sent, or sent on reconnect). */
  #pending = new Map();
  /**
   * session -> connection id: requests that timed out or were cancelled
   * after being sent. The gate may still be running them, so they keep
   * their place in flight until their answer comes or that connection ends.
   */
  #zombies = new Map();
  /**
   * The current connection: `{ id, ws, phase, deadline, lastSent,
   * lastReceived, keys, sent, received }`; `keys` (sealed only) are its
   * `{ c2s, s2c }`, `sent` and `received` count the sealed packages each way.
   */
  #conn = null;
  #connSeq = 0;
  #connecting = null;
  #connectPromise = null;
  #retry = null;
  #heartbeat = null;
  #delay;

  constructor(options) {
    this.#url = options.url;
    this.#ticket = options.ticket;
    if (!this.#ticket?.secret) throw new TypeError('GateClient needs the ticket `login` returned');
    this.#WS = webSocketClass(options.WebSocket);
    this.#wsOptions = options.webSocketOptions;
    this.#opts = {
      reconnectDelayMs: options.reconnectDelayMs ?? 100,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 3000,
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      requestTimeoutMs: options.requestTimeoutMs ?? 0,
      seal: options.seal ?? true,
    };
    this.#limits = Object.freeze({
      maxInFlight: options.maxInFlight ?? DEFAULT_LIMITS.maxInFlight,
      maxRequestBytes: Math.min(options.maxRequestBytes ?? DEFAULT_LIMITS.maxRequestBytes, DEFAULT_LIMITS.maxRequestBytes),
    });
    this.#delay = this.#opts.reconnectDelayMs;
    this.#storage = options.storage ?? null;
    this.#storageKey = options.storageKey ?? DEFAULT_STORAGE_KEY;
    const saved = options[RESUMED];
    if (saved) {
      this.#resumed = true;
      this.#index = saved.index;
      this.#lastPush = saved.push;
      this.#nextSession = saved.session;
      this.#reserved = saved.session;
    }
    for (const [type, key] of [
      ['push', 'onPush'],
      ['gap', 'onGap'],
      ['kick', 'onKick'],
      ['state', 'onState'],
      ['open', 'onOpen'],
      ['end', 'onEnd'],
      ['tamper', 'onTamper'],
    ]) {
      if (options[key]) this.on(type, options[key]);
    }
  }

  /**
   * A client for the session saved in `options.storage` by an earlier
   * client (a page before its reload), or `null` if none is saved there.
   */
  static resume(options) {
    let saved;
    try {
      saved = JSON.parse(options.storage.getItem(options.storageKey ?? DEFAULT_STORAGE_KEY));
    } catch {
      return null;
    }
    const numbers = ['index', 'push', 'session'].every((k) => Number.isSafeInteger(saved?.[k]) && saved[k] >= 0);
    const texts = ['uid', 'server', 'subid', 'secret'].every((k) => typeof saved?.[k] === 'string');
    if (saved?.v !== 1 || !numbers || !texts) return null;
    let secret;
    try {
      secret = b64decode(saved.secret);
    } catch {
      return null;
    }
    const ticket = { uid: saved.uid, server: saved.server, subid: saved.subid, secret };
    return new GateClient({ ...options, ticket, [RESUMED]: saved });
  }

  /** `idle`, `connecting`, `open`, `reconnecting` or `ended`. */
  get state() {
    return this.#state;
  }

  /** The last handshake index used. */
  get index() {
    return this.#index;
  }

  /** The last push sequence number delivered (or lost, after a gap). */
  get lastPush() {
    return this.#lastPush;
  }

  /** The current connection's welcome: `{ version, idleMs }`. */
  get welcome() {
    return this.#welcome;
  }

  /** Why the session ended (`null` while it lives). */
  get ended() {
    return this.#ended;
  }

  /** The limits kept: `{ maxInFlight, maxRequestBytes }`. */
  get limits() {
    return this.#limits;
  }

  /** Requests sent (or to be re-sent) and not answered yet. */
  get inFlight() {
    return this.#pending.size + this.#zombies.size;
  }

  /** Requests waiting for a place in flight. */
  get queued() {
    return this.#queue.length;
  }

  /** Whether this client continues a session saved by an earlier one. */
  get resumed() {
    return this.#resumed;
  }

  /** Whether the current connection is open and sealed. */
  get sealed() {
    return this.#conn?.phase === 'open' && !!this.#conn.keys;
  }

  /** Connections dropped because a package from the gate failed to open. */
  get tampered() {
    return this.#tampered;
  }

  /** Adds a listener; returns a function that removes it. */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /** Removes a listener. */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  /**
   * Connects and handshakes; resolves once the session is open (the
   * welcome in `welcome`). Calling it again returns the same promise.
   */
  connect() {
    if (this.#ended) return Promise.reject(this.#ended);
    if (!this.#connectPromise) {
      this.#connectPromise = new Promise((resolve, reject) => {
        this.#connecting = { resolve, reject };
      });
      this.#attempt();
    }
    return this.#connectPromise;
  }

  /**
   * Sends a request; resolves with the answer's bytes. Rejects with
   * `RequestTooLarge` at once, `RequestError` for an error response,
   * `RequestTimeout`, the signal's reason when aborted, or `SessionEnded`.
   */
  request(content, options = {}) {
    if (this.#ended) return Promise.reject(this.#ended);
    const { timeoutMs = this.#opts.requestTimeoutMs, signal } = options;
    let data;
    try {
      data = bytes(content);
    } catch (error) {
      return Promise.reject(error);
    }
    if (data.length > this.#limits.maxRequestBytes) {
      return Promise.reject(new RequestTooLarge(data.length, this.#limits.maxRequestBytes));
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const request = { payload: encodeRequest(data, 0), session: 0, sentOn: 0, resolve, reject, signal };
      if (timeoutMs > 0) {
        request.timer = setTimeout(() => this.#cancel(request, new RequestTimeout(timeoutMs)), timeoutMs);
      }
      if (signal) {
        request.onAbort = () => this.#cancel(request, signal.reason);
        signal.addEventListener('abort', request.onAbort, { once: true });
      }
      this.#queue.push(request);
      this.#pump();
    });
  }

  /** `request`, with the answer as text. */
  async requestText(content, options) {
    return text(await this.request(content, options));
  }

  /**
   * Closes this client. The gate keeps the session for its reconnect
   * window; a saved state stays, so `GateClient.resume` can continue it.
   */
  close() {
    this.#end('closed', 'closed by the client');
  }

  /**
   * Ends the session on this side for good: closes (WebSocket code 1000,
   * reason `logout`), forgets the saved state and the ticket.
   */
  logout() {
    this.#end('logout', 'logged out by the client');
  }

  // --- internals ---

  #emit(type, ...args) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        report(error);
      }
    }
  }

  #setState(state) {
    if (this.#state !== state) {
      this.#state = state;
      this.#emit('state', state);
    }
  }

  #save() {
    if (!this.#storage || !this.#ticket) return;
    const { uid, server, subid, secret } = this.#ticket;
    const saved = { v: 1, uid, server, subid, secret: b64encode(secret), index: this.#index, push: this.#lastPush, session: this.#reserved };
    try {
      this.#storage.setItem(this.#storageKey, JSON.stringify(saved));
    } catch {
      // A full or refused storage only loses the resume.
    }
  }

  #forget() {
    try {
      this.#storage?.removeItem(this.#storageKey);
    } catch {
      // As above.
    }
  }

  #takeSession() {
    const session = this.#nextSession;
    this.#nextSession = (session + 1) >>> 0 || 1;
    if (this.#storage && this.#nextSession > this.#reserved) {
      this.#reserved = this.#nextSession + RESERVE;
      this.#save();
    }
    return session;
  }

  /** Moves queued requests in flight while there is room, in order. */
  #pump() {
    const conn = this.#conn?.phase === 'open' ? this.#conn : null;
    while (this.#queue.length > 0 && this.inFlight < this.#limits.maxInFlight) {
      const request = this.#queue.shift();
      request.session = this.#takeSession();
      const { payload } = request;
      new DataView(payload.buffer).setUint32(payload.length - 4, request.session);
      this.#pending.set(request.session, request);
      if (conn) this.#send(conn, request);
    }
  }

  #send(conn, request) {
    this.#write(conn, request.payload);
    request.sentOn = conn.id;
  }

  /** Sends a package after the handshake (sealed, on a sealed connection). */
  #write(conn, payload) {
    if (conn.ws.readyState === 1) {
      holdWrites(conn);
      conn.ws.send(conn.keys ? seal(conn.keys.c2s, conn.sent++, payload) : payload);
      conn.lastSent = Date.now();
    }
  }

  #finish(request) {
    clearTimeout(request.timer);
    request.signal?.removeEventListener('abort', request.onAbort);
  }

  /** A request timed out or was aborted: never sent again, its answer dropped. */
  #cancel(request, error) {
    if (request.session && this.#pending.get(request.session) === request) {
      this.#pending.delete(request.session);
      if (request.sentOn && request.sentOn === this.#conn?.id) {
        this.#zombies.set(request.session, request.sentOn);
      }
    } else {
      const at = this.#queue.indexOf(request);
      if (at < 0) return;
      this.#queue.splice(at, 1);
    }
    this.#finish(request);
    request.reject(error);
    this.#pump();
  }

  /** One connect + handshake. */
  #attempt() {
    this.#retry = null;
    this.#index += 1;
    this.#save();
    this.#setState(this.#everOpened ? 'reconnecting' : 'connecting');
    const index = this.#index;
    const sealed = this.#opts.seal;
    const conn = {
      id: ++this.#connSeq,
      ws: null,
      phase: 'status',
      deadline: null,
      lastSent: 0,
      lastReceived: 0,
      // Fresh keys for every index, the counters from 0.
      keys: sealed ? sealKeys(this.#ticket.secret, `${index}`) : null,
      sent: 0,
      received: 0,
      // The socket is corked until the end of this turn (`holdWrites`).
      held: false,
    };
    this.#conn = conn;
    try {
      conn.ws = this.#wsOptions ? new this.#WS(this.#url, undefined, this.#wsOptions) : new this.#WS(this.#url);
    } catch (error) {
      this.#conn = null;
      this.#lost(conn, String(error?.message ?? error), false);
      return;
    }
    const { ws } = conn;
    // Node's `ws` hands a binary message over as the Buffer it already
    // has; 'arraybuffer' would copy each one. Browsers ignore a value they
    // do not know, Node's own WebSocket takes it as 'blob', React Native's
    // throws: all of them get 'arraybuffer'.
    try {
      ws.binaryType = 'nodebuffer';
    } catch {
      // Not a value this implementation knows.
    }
    if (ws.binaryType !== 'nodebuffer') ws.binaryType = 'arraybuffer';
    const ms = this.#opts.connectTimeoutMs;
    conn.deadline = setTimeout(() => this.#lost(conn, `no handshake answer within ${ms} ms`, false), ms);
    // The handshake is plain, so is its answer; what follows is sealed.
    ws.onopen = () => {
      ws.send(handshake(this.#ticket, index, `v=1,push=${this.#lastPush}${sealed ? ',seal=1' : ''}`));
      conn.lastSent = Date.now();
    };
    ws.onmessage = (event) => {
      const { data } = event;
      if (typeof data === 'string') return;
      // A plain Uint8Array view either way: a Buffer's `slice` would not
      // copy, and answers and pushes are copied out with `slice`, so that
      // none keeps (or shares) the socket read it came in.
      this.#message(
        conn,
        data instanceof Uint8Array ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data),
      );
    };
    ws.onerror = noop;
    ws.onclose = (event) =>
      this.#lost(conn, `connection closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`, false);
  }

  /** Lets go of a connection's socket without waiting for anything from it. */
  #drop(conn, reason) {
    clearTimeout(conn.deadline);
    const { ws } = conn;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = noop;
    try {
      if (ws.readyState > 1) return;
      // A silent socket is cut at once where the platform can (the `ws`
      // package); a browser's close() returns at once and finishes alone.
      if (!reason && typeof ws.terminate === 'function') ws.terminate();
      else ws.close(1000, reason ?? 'no answer');
    } catch {
      // Already closing.
    }
  }

  /**
   * Connection `conn` closed, failed or went silent: a session that was
   * ever open, or resumed, reconnects (at once when it was a silent one,
   * `immediate`); otherwise the first connection failed and it ends.
   * `why`: the close reason to send (`bad seal`); none: cut without a close
   * handshake where the platform can.
   */
  #lost(conn, detail, immediate, why) {
    if (this.#conn !== conn && conn.ws) return;
    this.#conn = null;
    this.#drop(conn, why);
    this.#suspect = why === 'bad seal';
    this.#stopHeartbeat();
    // What timed out on that connection can no longer be running there.
    this.#zombies.clear();
    if (this.#ended) return;
    if (!this.#everOpened && !this.#resumed) {
      this.#end('unreachable', detail);
      return;
    }
    if (this.#everOpened) this.#setState('reconnecting');
    this.#pump();
    let delay = 0;
    if (!immediate) {
      delay = this.#delay * (0.5 + Math.random() / 2);
      this.#delay = Math.min(this.#delay * 2, this.#opts.maxReconnectDelayMs);
    }
    this.#retry = setTimeout(() => this.#attempt(), delay);
  }

  #message(conn, payload) {
    if (this.#conn !== conn) return;
    conn.lastReceived = Date.now();
    if (conn.phase === 'status') {
      const status = text(payload);
      if (status === '200 OK') {
        conn.phase = 'welcome';
        return;
      }
      // A refused handshake is final: the ticket is wrong, or the session
      // is gone (404: its reconnect window ran out, or it ended while the
      // client was away).
      const gone = status.startsWith('404') && (this.#everOpened || this.#resumed);
      this.#end(gone ? 'expired' : 'refused', status);
      return;
    }
    if (conn.keys) {
      const plain = open(conn.keys.s2c, conn.received, payload);
      if (!plain) {
        // Altered, dropped, replayed or reordered on the way: nothing more
        // from this connection can be trusted. The next one has new keys;
        // what was not answered is re-sent there, as after any drop.
        this.#tampered += 1;
        this.#emit('tamper', this.#tampered);
        this.#lost(conn, 'a package from the gate failed to open', false, 'bad seal');
        return;
      }
      conn.received += 1;
      payload = plain;
    }
    if (conn.phase === 'welcome') {
      const response = parseResponse(payload);
      if (response?.flag === Flag.WELCOME) {
        const fields = parseFields(text(response.content));
        this.#opened(conn, { version: Number(fields.v), idleMs: Number(fields.idle ?? 0) || 0 });
        return;
      }
      this.#opened(conn, null);
    }
    this.#received(payload);
  }

  /** The handshake is done: re-send what is unanswered, in order. */
  #opened(conn, welcome) {
    clearTimeout(conn.deadline);
    conn.phase = 'open';
    conn.lastReceived = Date.now();
    this.#welcome = welcome;
    this.#everOpened = true;
    // Connections that each open and then fail to open a package (a relay
    // breaking them) are retried with a growing delay, not at once.
    if (!this.#suspect) this.#delay = this.#opts.reconnectDelayMs;
    for (const request of this.#pending.values()) this.#send(conn, request);
    this.#pump();
    this.#startHeartbeat(conn);
    this.#setState('open');
    this.#emit('open', welcome);
    this.#connecting?.resolve();
    this.#connecting = null;
  }

  #received(payload) {
    if (payload.length === 0) return; // heartbeat answer
    const response = parseResponse(payload);
    if (!response) return;
    const { content, flag, n } = response;
    switch (flag) {
      case Flag.OK:
      case Flag.ERROR: {
        const request = this.#pending.get(n);
        if (!request) {
          // A late answer to a request that timed out or was cancelled
          // (dropped), or one already answered (a re-send crossed it).
          if (this.#zombies.delete(n)) this.#pump();
          return;
        }
        this.#pending.delete(n);
        this.#finish(request);
        if (flag === Flag.OK) request.resolve(content.slice());
        else request.reject(new RequestError(n));
        this.#pump();
        return;
      }
      case Flag.PUSH:
      case Flag.PUSH_GAP:
        if (n > this.#lastPush) {
          this.#lastPush = n;
          this.#save();
          if (flag === Flag.PUSH) this.#emit('push', content.slice(), n);
          else this.#emit('gap', n);
        }
        return;
      case Flag.KICK:
        this.#end('kicked', text(content));
        return;
      default:
    }
  }

  /**
   * After the welcome: an empty package when nothing was sent for a third
   * of the idle timeout; a connection that heard nothing (not even a
   * heartbeat answer) for the whole timeout is dead: it is dropped without
   * waiting for a close handshake and replaced at once.
   */
  #startHeartbeat(conn) {
    this.#stopHeartbeat();
    const idle = this.#welcome?.idleMs ?? 0;
    if (!idle) return;
    const every = Math.max(20, Math.floor(idle / 3));
    const tick = Math.max(10, Math.min(1000, Math.floor(idle / 6)));
    this.#heartbeat = setInterval(() => {
      const now = Date.now();
      if (now - conn.lastReceived > idle) {
        this.#lost(conn, `nothing heard for ${idle} ms`, true);
        return;
      }
      if (now - conn.lastSent >= every) this.#write(conn, EMPTY);
    }, tick);
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeat);
    this.#heartbeat = null;
  }

  #end(reason, detail) {
    if (this.#ended) return;
    const error = new SessionEnded(reason, detail);
    this.#ended = error;
    clearTimeout(this.#retry);
    this.#stopHeartbeat();
    const conn = this.#conn;
    this.#conn = null;
    if (conn) this.#drop(conn, reason);
    if (FORGET.has(reason)) this.#forget();
    if (reason === 'logout') this.#ticket = null;
    const requests = [...this.#queue, ...this.#pending.values()];
    this.#queue = [];
    this.#pending.clear();
    this.#zombies.clear();
    for (const request of requests) {
      this.#finish(request);
      request.reject(error);
    }
    if (reason === 'kicked') this.#emit('kick', detail);
    this.#setState('ended');
    this.#emit('end', error);
    this.#connecting?.reject(error);
    this.#connecting = null;
  }
}
