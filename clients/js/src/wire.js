// Byte-level helpers shared by the login and the gate client: base64 as the
// protocol writes it (RFC 4648, padded), text, big-endian numbers, the
// request and response layouts (docs/PROTOCOL.md sections 4 and 5).

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** UTF-8 bytes of a string (bytes are returned as they are). */
export function bytes(value) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new TypeError('expected a string or bytes');
}

/** Text of UTF-8 bytes. */
export function text(value) {
  return decoder.decode(value);
}

/** Standard padded base64 of bytes. */
export function b64encode(data) {
  let binary = '';
  for (let i = 0; i < data.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Bytes of standard base64 text; throws on anything else. */
export function b64decode(textValue) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(textValue) || textValue.length % 4 === 1) {
    throw new Error(`not base64: ${JSON.stringify(textValue.slice(0, 40))}`);
  }
  const binary = atob(textValue);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** Concatenation of byte arrays. */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** A request payload: content ‖ BE32(session). */
export function encodeRequest(content, session) {
  const out = new Uint8Array(content.length + 4);
  out.set(content, 0);
  new DataView(out.buffer).setUint32(content.length, session >>> 0);
  return out;
}

/** Response flags (docs/PROTOCOL.md section 5). */
export const Flag = Object.freeze({
  ERROR: 0,
  OK: 1,
  PUSH: 2,
  KICK: 3,
  PUSH_GAP: 4,
  WELCOME: 5,
});

/**
 * Splits a response payload `content ‖ u8(flag) ‖ BE32(n)`; `null` when it
 * is shorter than 5 bytes.
 */
export function parseResponse(payload) {
  if (payload.length < 5) return null;
  const at = payload.length - 5;
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return {
    content: payload.subarray(0, at),
    flag: payload[at],
    n: view.getUint32(at + 1),
  };
}

/** Fields of `key=value,...` text (the welcome's content). */
export function parseFields(value) {
  const fields = {};
  for (const item of value.split(',')) {
    const eq = item.indexOf('=');
    if (eq > 0) fields[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return fields;
}

/** `n` random bytes from the platform's CSPRNG (WebCrypto). */
export function randomBytes(n) {
  const out = new Uint8Array(n);
  globalThis.crypto.getRandomValues(out);
  return out;
}

/**
 * Incoming WebSocket messages as a queue: `next()` resolves with the next
 * one, or rejects once the socket closed (or failed) and nothing is left.
 */
export class Inbox {
  constructor(ws) {
    this.items = [];
    this.waiters = [];
    this.ended = null;
    ws.addEventListener('message', (event) => this.push(event.data));
    ws.addEventListener('close', (event) =>
      this.end(new Error(`connection closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`)),
    );
    ws.addEventListener('error', () => this.end(new Error('connection failed')));
  }

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(item);
    else this.items.push(item);
  }

  end(error) {
    if (this.ended) return;
    this.ended = error;
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }

  next() {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}

/** The WebSocket constructor to use: the one given, else the platform's. */
export function webSocketClass(given) {
  const WS = given ?? globalThis.WebSocket;
  if (!WS) {
    throw new Error('no WebSocket: pass one (e.g. the `ws` package) as the WebSocket option');
  }
  return WS;
}

/** Resolves once `ws` is open; rejects if it closes or fails first. */
export function opened(ws) {
  return new Promise((resolve, reject) => {
    ws.addEventListener('open', () => resolve(), { once: true });
    ws.addEventListener('error', () => reject(new Error('cannot connect')), { once: true });
    ws.addEventListener('close', (e) => reject(new Error(`closed while connecting (${e.code})`)), {
      once: true,
    });
  });
}
