// @gatelogin/client: the login server and the message gate over WebSocket
// (docs/PROTOCOL.md section 9), for browser games and Node.

export { login, LoginError } from './login.js';
export { GateClient, DEFAULT_LIMITS } from './gate.js';
export { RequestError, RequestTimeout, RequestTooLarge, SessionEnded } from './errors.js';
