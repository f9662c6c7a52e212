// The gate client over WebSocket (docs/PROTOCOL.md sections 3 to 5 and 9):
// each package is one binary message. One GateClient is one login session:
// it handshakes (opted in to the extensions), turns requests into promises
// keyed by session number, delivers pushes and kicks, sends heartbeats, and
// when the connection drops it reconnects with the next index, re-sends
// every unanswered request with its session number (the gate answers those
// from its cache: nothing runs twice) and asks for the pushes after the
// last one it delivered (each is delivered exactly once).

import { sha256 } from '@noble/hashes/sha2.js';
import { hmac } from '@noble/hashes/hmac.js';

import {
  Flag,
  b64encode,
  bytes,
  encodeRequest,
  parseFields,
  parseResponse,
  text,
  webSocketClass,
} from './wire.js';

/** A request the gate answered with an error response. */
export class RequestError extends Error {
  constructor(session) {
    super(`request ${session} failed (error response)`);
    this.name = 'RequestError';
    this.session = session;
  }
}

/** The session is over (kicked, expired, refused): nothing more can be sent. */
export class SessionEnded extends Error {
  constructor(reason) {
    super(`session ended: ${reason}`);
    this.name = 'SessionEnded';
    this.reason = reason;
  }
}

/** The gate username `b64(uid) "@" b64(server) "#" b64(subid)`. */
export function username(ticket) {
  return `${b64encode(bytes(ticket.uid))}@${b64encode(bytes(ticket.server))}#${b64encode(bytes(ticket.subid))}`;
}

/**
 * The handshake payload for `index`: `username:index:b64(mac):ext`, the MAC
 * HMAC-SHA256 over `username:index` keyed with the login's gate secret.
 */
export function handshake(ticket, index, ext) {
  const signed = `${username(ticket)}:${index}`;
  const mac = hmac(sha256, ticket.secret, bytes(signed));
  return bytes(ext ? `${signed}:${b64encode(mac)}:${ext}` : `${signed}:${b64encode(mac)}`);
}

/**
 * One login session on the gate, over WebSocket.
 *
 * Events (constructor options): `onPush(content, seq)`, `onGap(lastLost)`,
 * `onKick(reason)`, `onState(state)` with state one of `connecting`,
 * `open`, `reconnecting`, `ended`, `closed`.
 */
export class GateClient {
  /**
   * @param {object} options
   * @param {string} options.url the gate's WebSocket address (`ws://host:port/`)
   * @param {{uid: string, server: string, subid: string, secret: Uint8Array}} options.ticket from `login`
   * @param {typeof WebSocket} [options.WebSocket]
   * @param {number} [options.reconnectDelayMs=100] first delay before a reconnect, doubled up to `maxReconnectDelayMs`
   * @param {number} [options.maxReconnectDelayMs=3000]
   * @param {number} [options.connectTimeoutMs=5000] deadline of one connect + handshake
   */
  constructor(options) {
    this.url = options.url;
    this.ticket = options.ticket;
    this.WS = webSocketClass(options.WebSocket);
    this.onPush = options.onPush ?? (() => {});
    this.onGap = options.onGap ?? (() => {});
    this.onKick = options.onKick ?? (() => {});
    this.onState = options.onState ?? (() => {});
    this.reconnectDelayMs = options.reconnectDelayMs ?? 100;
    this.maxReconnectDelayMs = options.maxReconnectDelayMs ?? 3000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    /** The last handshake index sent. */
    this.index = 0;
    /** The last push sequence number delivered (or lost, after a gap). */
    this.lastPush = 0;
    /** The welcome of the current connection: `{ version, idleMs }`. */
    this.welcome = null;
    this.state = 'idle';
    this.nextSession = 1;
    /** session -> { payload, resolve, reject } */
    this.pending = new Map();
    this.ws = null;
    this.timers = { heartbeat: null, retry: null };
    this.lastSent = 0;
    this.lastReceived = 0;
    this.delay = this.reconnectDelayMs;
    /** Whether a handshake ever succeeded: only then are drops retried. */
    this.everOpened = false;
  }

  /**
   * Connects (index 1, or the next one); resolves on `200 OK`. If this
   * first connection fails, the client is closed (no retries); once one
   * succeeded, every later drop is retried.
   */
  connect() {
    if (this.state === 'ended' || this.state === 'closed') {
      return Promise.reject(new SessionEnded(this.state));
    }
    return this.attempt();
  }

  /**
   * Sends a request; resolves with the answer's bytes (rejects with
   * `RequestError` for an error response, `SessionEnded` if the session
   * ends first). A request made while disconnected is sent on reconnect.
   */
  request(content) {
    if (this.state === 'ended' || this.state === 'closed') {
      return Promise.reject(new SessionEnded(this.state));
    }
    const session = this.nextSession;
    this.nextSession = (this.nextSession + 1) >>> 0 || 1;
    const payload = encodeRequest(bytes(content), session);
    return new Promise((resolve, reject) => {
      this.pending.set(session, { payload, resolve, reject });
      if (this.state === 'open') this.send(payload);
    });
  }

  /** `request`, with the answer as text. */
  async requestText(content) {
    return text(await this.request(content));
  }

  /** Closes for good (the gate keeps the session until its window runs out). */
  close() {
    this.end('closed', new SessionEnded('closed by the client'));
  }

  // --- internals ---

  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.onState(state);
    }
  }

  send(payload) {
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(payload);
      this.lastSent = Date.now();
    }
  }

  /** One connect + handshake; resolves on `200 OK`, rejects otherwise. */
  attempt() {
    this.index += 1;
    const index = this.index;
    this.setState(this.index === 1 ? 'connecting' : 'reconnecting');
    const ws = new this.WS(this.url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        if (error) reject(error);
        else resolve();
      };
      const deadline = setTimeout(() => {
        settle(new Error(`no handshake answer within ${this.connectTimeoutMs} ms`));
        ws.close();
      }, this.connectTimeoutMs);
      ws.onopen = () => {
        ws.send(handshake(this.ticket, index, `v=1,push=${this.lastPush}`));
      };
      ws.onmessage = (event) => {
        if (this.ws !== ws) return;
        const payload = new Uint8Array(event.data);
        if (!settled) {
          const status = text(payload);
          if (status === '200 OK') {
            this.opened();
            settle();
            return;
          }
          const fatal = /^(401|404)/.test(status);
          settle(fatal ? new SessionEnded(status) : new Error(`handshake refused: ${status}`));
          if (fatal) this.end('ended', new SessionEnded(status));
          return;
        }
        this.received(payload);
      };
      ws.onerror = () => {};
      ws.onclose = () => {
        settle(new Error('connection closed during the handshake'));
        if (this.ws !== ws) return;
        this.ws = null;
        this.stopHeartbeat();
        if (this.state === 'ended' || this.state === 'closed') return;
        if (!this.everOpened) {
          this.end('closed', new SessionEnded('the first connection failed'));
          return;
        }
        this.scheduleReconnect();
      };
    });
  }

  /** `200 OK`: re-send what is unanswered, in order. */
  opened() {
    this.everOpened = true;
    this.setState('open');
    this.delay = this.reconnectDelayMs;
    this.lastReceived = Date.now();
    for (const [, request] of [...this.pending].sort((a, b) => a[0] - b[0])) {
      this.send(request.payload);
    }
  }

  scheduleReconnect() {
    this.setState('reconnecting');
    clearTimeout(this.timers.retry);
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, this.maxReconnectDelayMs);
    this.timers.retry = setTimeout(() => {
      this.attempt().catch(() => {
        // A refused or failed attempt: its close schedules the next one
        // (unless the session ended).
      });
    }, delay);
  }

  received(payload) {
    this.lastReceived = Date.now();
    if (payload.length === 0) return; // heartbeat answer
    const response = parseResponse(payload);
    if (!response) return;
    const { content, flag, n } = response;
    switch (flag) {
      case Flag.OK:
      case Flag.ERROR: {
        const request = this.pending.get(n);
        if (!request) return; // already answered (a re-send crossed it)
        this.pending.delete(n);
        if (flag === Flag.OK) request.resolve(content.slice());
        else request.reject(new RequestError(n));
        return;
      }
      case Flag.PUSH:
        if (n > this.lastPush) {
          this.lastPush = n;
          this.onPush(content.slice(), n);
        }
        return;
      case Flag.PUSH_GAP:
        if (n > this.lastPush) {
          this.lastPush = n;
          this.onGap(n);
        }
        return;
      case Flag.KICK: {
        const reason = text(content);
        this.onKick(reason);
        this.end('ended', new SessionEnded(reason));
        return;
      }
      case Flag.WELCOME: {
        const fields = parseFields(text(content));
        this.welcome = { version: Number(fields.v), idleMs: Number(fields.idle ?? 0) };
        this.startHeartbeat();
        return;
      }
      default:
    }
  }

  /**
   * After the welcome: an empty package when nothing was sent for a third
   * of the idle timeout; and a connection that heard nothing (not even a
   * heartbeat answer) for the whole timeout is taken as dead and replaced.
   */
  startHeartbeat() {
    this.stopHeartbeat();
    const idle = this.welcome?.idleMs ?? 0;
    if (!idle) return;
    const every = Math.max(50, Math.floor(idle / 3));
    this.timers.heartbeat = setInterval(() => {
      const now = Date.now();
      if (now - this.lastReceived > idle) {
        this.ws?.close();
        return;
      }
      if (now - this.lastSent >= every) this.send(new Uint8Array(0));
    }, every);
  }

  stopHeartbeat() {
    clearInterval(this.timers.heartbeat);
    this.timers.heartbeat = null;
  }

  end(state, error) {
    clearTimeout(this.timers.retry);
    this.stopHeartbeat();
    this.setState(state);
    const ws = this.ws;
    this.ws = null;
    ws?.close();
    for (const [, request] of this.pending) request.reject(error);
    this.pending.clear();
  }
}
