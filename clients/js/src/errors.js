// The errors the gate client rejects with. Each has its own class (for
// `instanceof`) and `name` (for code that crosses realms or bundles).

/** The gate answered a request with an error response. */
export class RequestError extends Error {
  constructor(session) {
    super(`request ${session} failed (error response)`);
    this.name = 'RequestError';
    /** The request's session number. */
    this.session = session;
  }
}

/** A request's `timeoutMs` ran out before its answer came. */
export class RequestTimeout extends Error {
  constructor(timeoutMs) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = 'RequestTimeout';
    this.timeoutMs = timeoutMs;
  }
}

/** A request's content is over the gate's limit: it was never sent. */
export class RequestTooLarge extends Error {
  constructor(size, limit) {
    super(`request content of ${size} bytes is over the limit of ${limit}`);
    this.name = 'RequestTooLarge';
    this.size = size;
    this.limit = limit;
  }
}

/**
 * The session is over: nothing more can be sent. `reason` says why
 * (`kicked`, `expired`, `refused`, `unreachable`, `closed`, `logout`);
 * `detail` is the kick's text, the handshake's status line or what failed.
 */
export class SessionEnded extends Error {
  constructor(reason, detail = '') {
    super(detail ? `session ended: ${reason} (${detail})` : `session ended: ${reason}`);
    this.name = 'SessionEnded';
    this.reason = reason;
    this.detail = detail;
  }
}
