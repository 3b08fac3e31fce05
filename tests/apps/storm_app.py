"""The app of the wake storm tests: answers `GET /item/N` with `item N from PID` (and
`GET /slow/N` the same after 20 ms), `POST /digest` with the SHA-256 of the body it
received (hex), so that a test can tell that every request reached it whole, and closes the
connection without answering `GET /hangup`. Standard library only; listens on
127.0.0.1:$PORT."""

import hashlib
import http.server
import os
import socket
import time

CHUNK = 64 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Head and body go out in two writes: without this, Nagle's algorithm holds the
        # body back until the proxy's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def reply(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, "ok")
        elif self.path.startswith("/slow/"):
            # Busy for a moment: a crash then finds requests in the middle of being served.
            time.sleep(0.02)
            self.reply(200, "item %s from %d" % (self.path[len("/slow/"):], os.getpid()))
        elif self.path == "/hangup":
            # Alive, but closes the connection without a word.
            self.close_connection = True
        elif self.path.startswith("/item/"):
            self.reply(200, "item %s from %d" % (self.path[len("/item/"):], os.getpid()))
        else:
            self.reply(404, "not found")

    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        while left:
            piece = self.rfile.read(min(left, CHUNK))
            if not piece:
                break
            left -= len(piece)
            digest.update(piece)
        self.reply(200, digest.hexdigest())


class Server(http.server.ThreadingHTTPServer):
    # A thousand connections may arrive together the moment it listens.
    request_queue_size = 4096
    daemon_threads = True


print("storm app starting, pid", os.getpid(), flush=True)
Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
