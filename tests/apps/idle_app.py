"""A tenant for the idle tests: `GET /pid` says which process answers, `GET /slow/N` does
too after N silent seconds (a long poll), `GET /health` is healthy, `GET /ws` is a WebSocket echo (handshake written by hand: standard library only).
With OUTBOUND_URL set, a background thread fetches that URL every 300 ms: outbound work and
nothing else. Listens on 127.0.0.1:$PORT."""

import base64
import hashlib
import http.server
import os
import socket
import socketserver
import struct
import threading
import time
import urllib.request

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/ws":
            return self.websocket()
        if self.path.startswith("/slow/"):
            time.sleep(float(self.path[len("/slow/"):]))
        body = str(os.getpid()).encode() if self.path != "/health" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        # Echo every frame back unmasked (short frames only: the tests send small ones).
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            self.wfile.write(bytes([0x80 | opcode, len(payload)]) + payload)
            self.wfile.flush()
            if opcode == 8:
                return


def call_out(url):
    while True:
        try:
            urllib.request.urlopen(url, timeout=10).read()
        except OSError as error:
            print("outbound request failed:", error, flush=True)
        time.sleep(0.3)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if os.environ.get("OUTBOUND_URL"):
    threading.Thread(target=call_out, args=(os.environ["OUTBOUND_URL"],), daemon=True).start()
Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
