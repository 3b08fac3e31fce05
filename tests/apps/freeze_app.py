"""A tenant for the freeze tests: `GET /pid` says which process answers, `GET /health` is
healthy. A background thread does a little CPU work every 10 ms for as long as the process
runs, so its cgroup's CPU counter grows unless the process is frozen. On SIGTERM it writes
`sigterm` into its working directory (its data directory) and exits 0: the proof that a
stop reached it as SIGTERM. Listens on 127.0.0.1:$PORT."""

import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"ok" if self.path == "/health" else str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def burn():
    while True:
        sum(range(20000))
        time.sleep(0.01)


def terminated(_signum, _frame):
    with open("sigterm", "w") as marker:
        marker.write(str(os.getpid()))
    sys.exit(0)


signal.signal(signal.SIGTERM, terminated)
threading.Thread(target=burn, daemon=True).start()
Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
