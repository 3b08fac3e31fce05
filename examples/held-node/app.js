// A small Node app started by socket activation: tenement holds its port while it sleeps
// and passes the listening socket as fd 3 (LISTEN_FDS=1, LISTEN_PID = this process).
// Without them (run by hand), it listens on 127.0.0.1:$PORT, or 8000.
"use strict";
const http = require("http");

const tenant = process.env.TENEMENT_INSTANCE || "?";
let visits = 0;

const server = http.createServer((req, res) => {
  visits += 1;
  const body = JSON.stringify({ tenant, visits, pid: process.pid }) + "\n";
  // One write for head and body (Node corks them together); no Nagle delay either way.
  res.writeHead(req.url === "/health" || req.url === "/" ? 200 : 404, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(body),
  });
  res.end(body);
});
server.on("connection", (socket) => socket.setNoDelay(true));

const held =
  process.env.LISTEN_FDS === "1" && process.env.LISTEN_PID === String(process.pid);
if (held) {
  server.listen({ fd: 3 }, () => console.log(`${tenant}: serving the socket tenement holds`));
} else {
  const port = Number(process.env.PORT || 8000);
  server.listen(port, "127.0.0.1", () => console.log(`${tenant}: listening on 127.0.0.1:${port}`));
}
