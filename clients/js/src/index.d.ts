// Type declarations of @gatelogin/client (the runtime is src/index.js; the
// test suite checks the two against each other with `tsc --strict`).

/** What `login` returns and `GateClient` needs. Keep it secret: it logs the player in. */
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

/** A WebSocket class: the platform's, or one such as the `ws` package's. */
export type WebSocketClass = new (url: string, protocols?: string | string[], options?: object) => WebSocketLike;

/** What the library uses of a WebSocket. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array | string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  addEventListener(type: string, listener: (event: any) => void, options?: object): void;
}

/** Options both `login` and `GateClient` take for their connections. */
export interface ConnectionOptions {
  /** A WebSocket class (default: the platform's `WebSocket`; Node before 22: pass the `ws` package's). */
  WebSocket?: WebSocketClass;
  /**
   * The WebSocket constructor's third argument: with the `ws` package its
   * options, e.g. `{ origin, ca, headers }`. Not for browsers.
   */
  webSocketOptions?: object;
}

export interface LoginOptions extends ConnectionOptions {
  /** The login server's WebSocket address, e.g. `wss://game.example.com:8002/`. */
  url: string;
  user: string;
  password: string;
  /** The gate's server name. Default `sample`. */
  server?: string;
  /** The login server's long-term X25519 public key (32 bytes), to pin it. */
  serverKey?: Uint8Array;
  /** Asks for queue notices and gets each one. */
  onQueue?: (notice: QueueNotice) => void;
  /**
   * Pads the token and requires the server's key confirmation on the
   * `200` line (docs/PROTOCOL.md section 2.3); a success without it rejects
   * with "the server could not prove its key". Default true; false only
   * for login servers older than the confirmation.
   */
  confirm?: boolean;
  /** Deadline of the whole dialogue in ms. Default 10000. */
  timeoutMs?: number;
  /** Randomness (default: WebCrypto's getRandomValues). */
  randomBytes?: (n: number) => Uint8Array;
}

/** A status line other than 200: `status` is 401, 403, 406, 429 or 503. */
export class LoginError extends Error {
  readonly name: 'LoginError';
  readonly status: number;
  /** The whole status line. */
  readonly line: string;
}

/**
 * Logs in with the x25519 suite over WebSocket. Rejects with `LoginError`
 * when the server refuses, with `Error` when the connection fails, the
 * deadline passes, the server breaks the protocol or cannot prove its key
 * (`"the server could not prove its key"`).
 */
export function login(options: LoginOptions): Promise<Ticket>;

/** `ended` is final. */
export type GateState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'ended';

/** Why a session ended (`SessionEnded.reason`). */
export type EndReason = 'kicked' | 'expired' | 'refused' | 'unreachable' | 'closed' | 'logout';

/** The gate's welcome (docs/PROTOCOL.md section 5.2). */
export interface Welcome {
  /** The extension version served. */
  version: number;
  /** The gate's idle timeout in ms (0: none). */
  idleMs: number;
}

/** The limits a client keeps (docs/PROTOCOL.md section 8). */
export interface Limits {
  /** Requests in flight at once; more wait in order. Default 128. */
  readonly maxInFlight: number;
  /** Bytes of a request's content; more is refused. Default (and most) 65531. */
  readonly maxRequestBytes: number;
}

export const DEFAULT_LIMITS: Limits;

/** The events of a `GateClient` and their listeners' arguments. */
export interface GateEvents {
  /** A push, each exactly once, in order. */
  push: (content: Uint8Array, seq: number) => void;
  /** Pushes up to `lastLost` were dropped from the gate's backlog before this client got them. */
  gap: (lastLost: number) => void;
  /** The gate ended the session with this text (then `end` follows). */
  kick: (text: string) => void;
  /** The state changed. */
  state: (state: GateState) => void;
  /** A connection was opened: the first, then each reconnect. */
  open: (welcome: Welcome | null) => void;
  /** The session ended: once, last. */
  end: (error: SessionEnded) => void;
  /**
   * A package from the gate failed to open on a sealed connection (altered,
   * dropped, replayed or reordered on the way): that connection is dropped
   * and replaced like a lost one. `count`: such connections so far
   * (`tampered`). Once per connection.
   */
  tamper: (count: number) => void;
}

/** Web Storage's methods: `sessionStorage`, `localStorage` or your own. */
export interface SessionStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface GateOptions extends ConnectionOptions {
  /** The gate's WebSocket address, e.g. `wss://game.example.com:8889/`. */
  url: string;
  /** From `login`. */
  ticket: Ticket;
  /** First reconnect delay in ms, doubled per failure (with jitter). Default 100. */
  reconnectDelayMs?: number;
  /** Longest reconnect delay in ms. Default 3000. */
  maxReconnectDelayMs?: number;
  /** Deadline of one connect + handshake in ms. Default 5000. */
  connectTimeoutMs?: number;
  /** Default timeout of every request in ms (0: none). Default 0. */
  requestTimeoutMs?: number;
  /**
   * Asks for the sealed channel (docs/PROTOCOL.md section 3.2): every
   * message after the handshake's status is encrypted and authenticated
   * with ChaCha20-Poly1305, keys fresh per connection. Default true; false
   * only for gates older than it (they refuse a sealed handshake with 401).
   */
  seal?: boolean;
  /** Requests in flight at once. Default 128 (the gate's `gate.max_inflight_per_user`). */
  maxInFlight?: number;
  /** Largest request content in bytes. Default 65531, which is also the most. */
  maxRequestBytes?: number;
  /**
   * Where to keep the session so a reloaded page can resume it (off by
   * default; read the README on what keeping it means).
   */
  storage?: SessionStorage;
  /** The key under `storage`. Default `gatelogin.session`. */
  storageKey?: string;
  onPush?: GateEvents['push'];
  onGap?: GateEvents['gap'];
  onKick?: GateEvents['kick'];
  onState?: GateEvents['state'];
  onOpen?: GateEvents['open'];
  onEnd?: GateEvents['end'];
  onTamper?: GateEvents['tamper'];
}

/** Options of `GateClient.resume`: those of a client, without the ticket, with the storage. */
export type ResumeOptions = Omit<GateOptions, 'ticket' | 'storage'> & { storage: SessionStorage };

export interface RequestOptions {
  /** Rejects with `RequestTimeout` after this many ms (0: never). Default: the client's `requestTimeoutMs`. */
  timeoutMs?: number;
  /** Rejects with the signal's reason when it aborts. */
  signal?: AbortSignal;
}

/** What a request's content may be: text (sent as UTF-8) or bytes. */
export type RequestContent = string | Uint8Array | ArrayBuffer | ArrayBufferView;

/** The gate answered a request with an error response. */
export class RequestError extends Error {
  readonly name: 'RequestError';
  /** The request's session number. */
  readonly session: number;
}

/** A request's timeout ran out: it is never sent again and its late answer is dropped. */
export class RequestTimeout extends Error {
  readonly name: 'RequestTimeout';
  readonly timeoutMs: number;
}

/** A request's content is over `maxRequestBytes`: it was never sent. */
export class RequestTooLarge extends Error {
  readonly name: 'RequestTooLarge';
  readonly size: number;
  readonly limit: number;
}

/** The session is over: nothing more can be sent. */
export class SessionEnded extends Error {
  readonly name: 'SessionEnded';
  readonly reason: EndReason;
  /** The kick's text, the handshake's status line, or what failed. */
  readonly detail: string;
}

/** One login session on the gate over WebSocket. */
export class GateClient {
  constructor(options: GateOptions);
  /** A client for the session saved in `options.storage`, or `null` if none is saved. */
  static resume(options: ResumeOptions): GateClient | null;
  readonly state: GateState;
  /** The last handshake index used. */
  readonly index: number;
  /** The last push sequence number delivered (or lost, after a gap). */
  readonly lastPush: number;
  /** The current connection's welcome (set when `connect()` resolves). */
  readonly welcome: Welcome | null;
  /** Why the session ended; `null` while it lives. */
  readonly ended: SessionEnded | null;
  readonly limits: Limits;
  /** Requests sent (or to be re-sent) and not answered yet. */
  readonly inFlight: number;
  /** Requests waiting for a place in flight. */
  readonly queued: number;
  /** Whether this client continues a session saved by an earlier one. */
  readonly resumed: boolean;
  /** Whether the current connection is open and sealed. */
  readonly sealed: boolean;
  /** Connections dropped because a package from the gate failed to open. */
  readonly tampered: number;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof GateEvents>(type: K, listener: GateEvents[K]): () => void;
  off<K extends keyof GateEvents>(type: K, listener: GateEvents[K]): void;
  /**
   * Connects and handshakes; resolves once the session is open. Calling it
   * again returns the same promise. Rejects with `SessionEnded`
   * (`refused`, `expired`, `unreachable`, or the client was closed).
   */
  connect(): Promise<void>;
  /**
   * A request; resolves with the answer. Rejects with `RequestTooLarge`
   * (at once), `RequestError`, `RequestTimeout`, the signal's reason, or
   * `SessionEnded`.
   */
  request(content: RequestContent, options?: RequestOptions): Promise<Uint8Array>;
  /** `request`, with the answer decoded as UTF-8. */
  requestText(content: RequestContent, options?: RequestOptions): Promise<string>;
  /** Closes this client; the saved state (if any) stays for `resume`. */
  close(): void;
  /** Ends the session on this side for good and forgets the saved state. */
  logout(): void;
}
