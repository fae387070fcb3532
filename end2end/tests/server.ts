// Starts real Tidings servers (the binary cargo built) on free ports, each with its own
// data dir, and talks to their HTTP API the way any client would.
import { execFileSync, spawn, ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import { createServer, Server as HttpServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
export const BIN = process.env.TIDINGS_BIN ?? path.join(ROOT, 'target', 'debug', 'tidings');
export const STATIC_DIR = process.env.TIDINGS_STATIC ?? path.join(ROOT, 'app', 'dist');

export interface Event { id: number; ts: number; stream: string; data: any }

export class Server {
  private constructor(
    private proc: ChildProcess,
    public readonly port: number,
    public readonly dataDir: string,
    private readonly args: string[],
  ) {}

  get base() { return `http://127.0.0.1:${this.port}`; }

  /** Starts a server; `port` 0 (default) picks a free one, printed by the server. */
  static async start(opts: { args?: string[]; dataDir?: string; port?: number; demo?: boolean } = {}): Promise<Server> {
    const dataDir = opts.dataDir ?? mkdtempSync(path.join(tmpdir(), 'tidings-e2e-'));
    const args = [...(opts.args ?? [])];
    if (!opts.demo) args.push('--no-demo');
    const proc = spawn(BIN, ['--bind', `127.0.0.1:${opts.port ?? 0}`, '--data-dir', dataDir, '--static-dir', STATIC_DIR, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    });
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 20_000);
      proc.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const m = out.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      });
      proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited with ${code}: ${out}`)); });
    });
    return new Server(proc, port, dataDir, args);
  }

  /** Graceful stop (SIGTERM), resolved when the process has exited. */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGTERM');
    await exited;
  }

  /** The same server again: same port, same data dir. */
  async restart(): Promise<Server> {
    await this.stop();
    return Server.start({ args: this.args.filter((a) => a !== '--no-demo'), dataDir: this.dataDir, port: this.port });
  }

  async publish(stream: string, data: object, token?: string): Promise<Event> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const r = await fetch(`${this.base}/api/publish`, { method: 'POST', headers, body: JSON.stringify({ stream, data }) });
    if (r.status !== 201) throw new Error(`publish answered ${r.status}: ${await r.text()}`);
    return r.json();
  }

  chat(author: string, body: string) { return this.publish('chat', { author, body }); }
}

/** A plain static file server for the built app, on another origin than the API. */
export async function staticSite(): Promise<{ base: string; close: () => Promise<void> }> {
  const server: HttpServer = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const file = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
    try {
      const body = await readFile(path.join(STATIC_DIR, path.normalize(file)));
      const type = file.endsWith('.wasm') ? 'application/wasm' : file.endsWith('.js') ? 'text/javascript'
        : file.endsWith('.css') ? 'text/css' : file.endsWith('.svg') ? 'image/svg+xml' : 'text/html';
      res.writeHead(200, { 'content-type': type }).end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as any).port;
  return { base: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(() => r())) };
}

/** nginx in front of one server, running one of deploy/'s configurations (nginx.conf, or
 *  one that breaks things on purpose: nginx-no-websocket.conf, nginx-buffering.conf). */
export class Proxy {
  private constructor(private proc: ChildProcess, private dir: string, private upstream: number, public readonly port: number) {}

  get base() { return `http://127.0.0.1:${this.port}`; }

  static async start(file: string, upstream: number): Promise<Proxy> {
    const dir = mkdtempSync(path.join(tmpdir(), 'tidings-proxy-'));
    const port = await freePort();
    const p = new Proxy(undefined as any, dir, upstream, port);
    p.write(file);
    p.proc = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-g', `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;`], { stdio: 'ignore' });
    await waitFor(async () => (await fetch(`${p.base}/readyz`).catch(() => null))?.ok ?? false, 'nginx');
    return p;
  }

  private write(file: string) {
    const conf = execFileSync(path.join(ROOT, 'deploy', 'nginx-conf.sh'), ['--file', file, String(this.port), String(this.upstream)]);
    writeFileSync(path.join(this.dir, 'nginx.conf'), conf);
  }

  /** Switches to another configuration in place (nginx reloads on SIGHUP; connections it
   *  already holds finish on the old one). */
  async swap(file: string) {
    this.write(file);
    this.proc.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 500));
  }

  async stop() { this.proc.kill('SIGTERM'); }
}

/** A proxy that passes HTTP through (streams too) but answers every WebSocket upgrade
 *  itself, correctly, and then forwards nothing: what some antivirus and corporate proxies
 *  do. The socket opens and stays silent. */
export async function silentWebSocketProxy(upstream: number): Promise<{ base: string; close: () => void }> {
  const { createHash } = await import('node:crypto');
  const http = await import('node:http');
  const server = http.createServer((req, res) => {
    const up = http.request({ host: '127.0.0.1', port: upstream, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  const held: any[] = [];
  server.on('upgrade', (req, socket) => {
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    socket.on('error', () => {});
    held.push(socket);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as any).port;
  return {
    base: `http://127.0.0.1:${port}`,
    close: () => { for (const s of held) s.destroy(); server.close(); server.closeAllConnections(); },
  };
}

/** Redis + N Tidings servers in cluster mode + nginx round robin (deploy/nginx.conf). */
export class ClusterSetup {
  private constructor(
    private redis: ChildProcess,
    public servers: Server[],
    private nginx: ChildProcess,
    public readonly port: number,
  ) {}

  get base() { return `http://127.0.0.1:${this.port}`; }

  static async start(n: number): Promise<ClusterSetup> {
    const dir = mkdtempSync(path.join(tmpdir(), 'tidings-cluster-'));
    const sock = path.join(dir, 'redis.sock');
    const redis = spawn('redis-server', ['--port', '0', '--unixsocket', sock, '--dir', dir, '--save', ''], { stdio: 'ignore' });
    await waitFor(() => existsSync(sock), 'redis socket');
    const servers: Server[] = [];
    for (let i = 0; i < n; i++) {
      // One session secret for the whole cluster: each server checks the others' tokens.
      servers.push(await Server.start({ args: ['--redis', `redis+unix://${sock}`, '--trusted-proxy', '127.0.0.1', '--secret', 'the-e2e-cluster-session-secret-0123456789'], dataDir: path.join(dir, `data${i}`) }));
    }
    const port = await freePort();
    // deploy/nginx.conf with this port and these upstreams: the one rewriter, shared with
    // server/tests/cluster.rs.
    const conf = execFileSync(path.join(ROOT, 'deploy', 'nginx-conf.sh'), [String(port), ...servers.map((s) => String(s.port))]);
    writeFileSync(path.join(dir, 'nginx.conf'), conf);
    const nginx = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-g', `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;`], { stdio: 'ignore' });
    await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null))?.ok ?? false, 'nginx');
    return new ClusterSetup(redis, servers, nginx, port);
  }

  async stop() {
    this.nginx.kill('SIGTERM');
    for (const s of this.servers) await s.stop();
    this.redis.kill('SIGTERM');
  }
}

async function waitFor(cond: () => boolean | Promise<boolean>, what: string) {
  const deadline = Date.now() + 15_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createNetServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as any).port;
      s.close(() => resolve(port));
    });
  });
}
