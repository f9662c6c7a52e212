// Serves the demo page (and the library and its @noble dependencies, which
// the page imports as modules) on http://127.0.0.1:8080/demo/.
// Usage: node demo/serve.mjs [--port N]   (N = 0: any free port; the line
// printed says which).

import { createReadStream, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
};
// Only what the page needs is served.
const allowed = ['/demo/', '/src/', '/node_modules/@noble/'];

export function serve(port = 8080) {
  const server = http.createServer((req, res) => {
    let url;
    try {
      url = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (url === '/' || url === '/demo') {
      res.writeHead(302, { location: '/demo/' }).end();
      return;
    }
    if (url.endsWith('/')) url += 'index.html';
    const file = path.join(root, path.normalize(url));
    if (!file.startsWith(root + path.sep) || !allowed.some((p) => url.startsWith(p))) {
      res.writeHead(404).end('not found\n');
      return;
    }
    try {
      if (!statSync(file).isFile()) throw new Error('not a file');
    } catch {
      res.writeHead(404).end('not found\n');
      return;
    }
    res.writeHead(200, {
      'content-type': types[path.extname(file)] ?? 'application/octet-stream',
      'cache-control': 'no-store',
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const at = process.argv.indexOf('--port');
  const port = Number(at > 0 ? process.argv[at + 1] : (process.env.PORT ?? 8080));
  const server = await serve(port);
  const { port: listening } = server.address();
  console.log(`chat page: http://127.0.0.1:${listening}/demo/  (Ctrl-C to stop)`);
}
