// The chat page: logs in with the library, joins a room of the chat example
// service (agent mode: `join <room>`, `say <text>`), shows every push, and
// keeps going across dropped connections (the library reconnects, re-sends
// and replays) and across a reload of the page (the session is kept in
// this tab's sessionStorage and resumed without a new login; see the
// library's README for what keeping it there means). Addresses come from
// the query string (`?login=ws://...&gate=ws://...`) or default to the
// gate's demo listeners.

import { GateClient, login } from '../src/index.js';

const params = new URLSearchParams(location.search);
const loginUrl = params.get('login') ?? 'ws://127.0.0.1:8002/';
const gateUrl = params.get('gate') ?? 'ws://127.0.0.1:8889/';
const $ = (id) => document.getElementById(id);
const decoder = new TextDecoder();
$('login-url').textContent = loginUrl;
$('gate-url').textContent = gateUrl;
if (params.get('user')) $('user').value = params.get('user');

let client = null;

function show(line, kind = '') {
  const item = document.createElement('li');
  item.textContent = line;
  if (kind) item.className = kind;
  $('messages').append(item);
  $('messages').scrollTop = $('messages').scrollHeight;
}

function setState(state) {
  $('state').textContent = state;
  $('state').className = `state ${state}`;
  document.body.dataset.state = state;
}

function loggedIn(yes) {
  $('login-form').hidden = yes;
  $('join-form').hidden = !yes;
  $('say-form').hidden = !yes;
  $('logout').hidden = !yes;
}

/** The options of every client of this page: its events and where the session is kept. */
const options = {
  url: gateUrl,
  storage: sessionStorage,
  onPush: (content) => show(decoder.decode(content)),
  onGap: () => show('(some messages were missed)', 'note'),
  onState: setState,
  // Each connection opened (the first, then every reconnect), for the tests.
  onOpen: () => {
    document.body.dataset.connections = String(Number(document.body.dataset.connections ?? 0) + 1);
  },
  onEnd: (ended) => {
    show(`disconnected: ${ended.reason}${ended.detail ? ` (${ended.detail})` : ''}`, 'error');
    loggedIn(false);
  },
};

// A session this tab had before a reload is continued without a login.
client = GateClient.resume(options);
if (client) {
  client
    .connect()
    .then(() => {
      document.body.dataset.resumed = 'yes';
      show('session resumed', 'note');
      loggedIn(true);
    })
    .catch((error) => {
      setState('offline');
      show(String(error.message ?? error), 'error');
    });
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const user = $('user').value.trim();
  try {
    setState('logging in');
    const ticket = await login({ url: loginUrl, user, password: $('password').value });
    client = new GateClient({ ...options, ticket });
    await client.connect();
    show(`logged in as ${user}`, 'note');
    loggedIn(true);
  } catch (error) {
    setState('offline');
    show(String(error.message ?? error), 'error');
  }
});

$('join-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    show(await client.requestText(`join ${$('room').value.trim()}`), 'note');
    document.body.dataset.joined = $('room').value.trim();
  } catch (error) {
    show(String(error.message ?? error), 'error');
  }
});

$('say-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const line = $('text').value;
  if (!line) return;
  $('text').value = '';
  try {
    await client.requestText(`say ${line}`);
  } catch (error) {
    show(String(error.message ?? error), 'error');
  }
});

$('logout').addEventListener('click', () => client?.logout());
