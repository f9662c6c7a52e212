// @gatelogin/client: the login server and the message gate over WebSocket
// (docs/PROTOCOL.md section 9), for browser games and Node.

export { login, LoginError, deriveKeys, token } from './login.js';
export { GateClient, RequestError, SessionEnded, handshake, username } from './gate.js';
export { Flag, b64decode, b64encode, bytes, text } from './wire.js';
