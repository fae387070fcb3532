// The Socket.IO peer: what an app built on Socket.IO 4.8 writes for live updates. Its
// default in-memory adapter, the WebSocket transport only (no long-polling upgrade), and
// one `io.emit` per published event: Socket.IO encodes the packet once per emit and writes
// it to every client. Events are the same JSON as Tidings' (`id`, `ts`, `stream`, `data`),
// sent as the Socket.IO event "event"; tidings-bench reads them over Engine.IO v4 framing.
//
//   node socketio-peer.js <port>
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 4001);
let nextId = 0;

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/api/publish')) {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      let msg;
      try { msg = JSON.parse(body); } catch { res.writeHead(400).end('{"error":"malformed JSON"}'); return; }
      const event = { id: ++nextId, ts: Date.now(), stream: msg.stream, data: msg.data };
      io.emit('event', event);
      res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify(event));
    });
  } else if (req.url === '/healthz') {
    res.end('ok');
  } else if (!req.url.startsWith('/socket.io/')) {
    res.writeHead(404).end();
  }
});
// No per-message compression (Socket.IO's default for WebSocket is off as well; said so).
const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false });
server.listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${server.address().port}`));
