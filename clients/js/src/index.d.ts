// Type declarations of @gatelogin/client.

/** What `login` returns and `GateClient` needs. */
export interface Ticket {
  /** The user name logged in with (the handshake names it). */
  uid: string;
  /** The gate's server name. */
  server: string;
  /** The session id the gate allocated (decimal text). */
  subid: string;
  /** The 32-byte gate secret the handshake MAC is keyed with. */
  secret: Uint8Array;
}

/** A queue notice (docs/PROTOCOL.md section 2.2). */
export interface QueueNotice {
  /** Logins admitted before this one (0: next). */
  position: number;
  /** The server's estimate of the wait. */
  waitMs: number;
  /** The login's place in the arrival order. */
  number: number;
}

export interface LoginOptions {
  /** The login server's WebSocket address, e.g. `ws://127.0.0.1:8002/`. */
  url: string;
  user: string;
  password: string;
  /** The gate's server name. Default `sample`. */
  server?: string;
  /** The login server's long-term X25519 public key (32 bytes), to pin it. */
  serverKey?: Uint8Array;
  /** Asks for queue notices and gets each one. */
  onQueue?: (notice: QueueNotice) => void;
  /** Deadline of the whole dialogue. Default 10000. */
  timeoutMs?: number;
  /** A WebSocket class (default: the platform's). */
  WebSocket?: unknown;
  /** Randomness (default: WebCrypto's getRandomValues). */
  randomBytes?: (n: number) => Uint8Array;
}

/** A status line other than 200: `status` is 401, 403, 406 or 503. */
export class LoginError extends Error {
  status: number;
  line: string;
}

/** Logs in with the x25519 suite over WebSocket. */
export function login(options: LoginOptions): Promise<Ticket>;

/** The keys both sides derive after line 3 (exported for test vectors). */
export function deriveKeys(input: {
  challenge: Uint8Array;
  clientPub: Uint8Array;
  serverPub: Uint8Array;
  shared: Uint8Array;
  pinned?: { serverKey: Uint8Array; es: Uint8Array };
}): { th: Uint8Array; proofKey: Uint8Array; tokenKey: Uint8Array; gateSecret: Uint8Array };

/** The login token `b64(user)@b64(server):b64(password)`. */
export function token(user: string, server: string, password: string): Uint8Array;

export type GateState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'ended' | 'closed';

export interface GateOptions {
  /** The gate's WebSocket address, e.g. `ws://127.0.0.1:8889/`. */
  url: string;
  ticket: Ticket;
  WebSocket?: unknown;
  /** A push, each exactly once, in order. */
  onPush?: (content: Uint8Array, seq: number) => void;
  /** Pushes up to `lastLost` were dropped from the gate's backlog. */
  onGap?: (lastLost: number) => void;
  /** The session was ended by the server (then no more reconnects). */
  onKick?: (reason: string) => void;
  onState?: (state: GateState) => void;
  /** First reconnect delay, doubled per failure. Default 100. */
  reconnectDelayMs?: number;
  /** Longest reconnect delay. Default 3000. */
  maxReconnectDelayMs?: number;
  /** Deadline of one connect + handshake. Default 5000. */
  connectTimeoutMs?: number;
}

/** An error response to a request. */
export class RequestError extends Error {
  session: number;
}

/** The session is over; `reason` says why. */
export class SessionEnded extends Error {
  reason: string;
}

/** One login session on the gate over WebSocket. */
export class GateClient {
  constructor(options: GateOptions);
  readonly state: GateState;
  /** The last handshake index sent. */
  readonly index: number;
  /** The last push sequence number delivered. */
  readonly lastPush: number;
  /** The current connection's welcome. */
  readonly welcome: { version: number; idleMs: number } | null;
  /** Connects and handshakes; resolves on `200 OK`. */
  connect(): Promise<void>;
  /** A request; resolves with the answer. */
  request(content: string | Uint8Array): Promise<Uint8Array>;
  /** A request; resolves with the answer as text. */
  requestText(content: string | Uint8Array): Promise<string>;
  /** Closes for good. */
  close(): void;
}

/** The handshake payload for `index` with the extension field `ext`. */
export function handshake(ticket: Ticket, index: number, ext?: string): Uint8Array;
/** The gate username of a ticket. */
export function username(ticket: Ticket): string;

export const Flag: Readonly<{
  ERROR: 0;
  OK: 1;
  PUSH: 2;
  KICK: 3;
  PUSH_GAP: 4;
  WELCOME: 5;
}>;
export function b64encode(data: Uint8Array): string;
export function b64decode(text: string): Uint8Array;
export function bytes(value: string | Uint8Array | ArrayBuffer | ArrayBufferView): Uint8Array;
export function text(value: Uint8Array): string;
