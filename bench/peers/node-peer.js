// The Node.js peer: what most Node apps would write for live updates. A `ws` broadcast
// server and a plain SSE server, speaking the same minimal wire as Tidings (a JSON event
// with `id` and `ts`), so tidings-bench drives both the same way. Like a typical app it
// encodes each event once per publish and sends the same string to every client.
//
//   node node-peer.js <port>
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 4000);
let nextId = 0;
const sseClients = new Set();

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/api/publish')) {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      let msg;
      try { msg = JSON.parse(body); } catch { res.writeHead(400).end('{"error":"malformed JSON"}'); return; }
      const event = { id: ++nextId, ts: Date.now(), stream: msg.stream, data: msg.data };
      const json = JSON.stringify(event);
      const frame = `{"type":"event","event":${json}}`;
      for (const ws of wss.clients) if (ws.readyState === 1) ws.send(frame);
      const sse = `id: ${event.id}\ndata: ${json}\n\n`;
      for (const r of sseClients) r.write(sse);
      res.writeHead(201, { 'content-type': 'application/json' }).end(json);
    });
  } else if (req.url.startsWith('/api/sse')) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write('retry: 1000\n\n');
    sseClients.add(res);
    req.on('close', () => sseClients.delete(res));
  } else if (req.url.startsWith('/api/poll')) {
    res.writeHead(200, { 'content-type': 'application/json' }).end(`{"events":[],"cursor":${nextId},"more":false}`);
  } else if (req.url === '/healthz') {
    res.end('ok');
  } else {
    res.writeHead(404).end();
  }
});
const wss = new WebSocketServer({ server, path: '/api/ws' });
server.listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${server.address().port}`));
