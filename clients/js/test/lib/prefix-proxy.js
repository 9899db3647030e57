// A reverse proxy that serves Herald under a path prefix (/push/... ->
// /...), HTTP and WebSocket upgrades alike, as nginx would with
// `location /push/ { proxy_pass http://herald/; }`: for testing that the
// demo and the client work behind one.

import http from "node:http";
import net from "node:net";

export async function startPrefixProxy(target, prefix = "/push") {
  const t = new URL(target);
  const strip = (url) => (url.startsWith(`${prefix}/`) ? url.slice(prefix.length) : null);
  const server = http.createServer((req, res) => {
    const path = strip(req.url);
    if (path === null) {
      res.writeHead(404).end();
      return;
    }
    const up = http.request({ host: t.hostname, port: t.port, method: req.method, path, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on("error", () => res.destroy());
    req.pipe(up);
    res.on("close", () => up.destroy());
  });
  server.on("upgrade", (req, socket, head) => {
    const path = strip(req.url);
    if (path === null) return socket.destroy();
    const up = net.connect(Number(t.port), t.hostname, () => {
      const lines = [`${req.method} ${path} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${lines.join("\r\n")}\r\n\r\n`);
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const end = () => {
      up.destroy();
      socket.destroy();
    };
    up.on("error", end);
    socket.on("error", end);
  });
  const sockets = new Set();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}${prefix}/`,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
