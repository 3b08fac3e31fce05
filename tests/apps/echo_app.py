"""A small instance for the proxy tests: says who it is, echoes headers, counts uploads,
streams downloads, breaks off mid-response on request, and echoes WebSocket frames.
Standard library only; listens on 127.0.0.1:$PORT and names itself by $INSTANCE."""

import base64
import hashlib
import http.server
import json
import os
import socket
import socketserver
import struct
import time
import urllib.parse

INSTANCE = os.environ.get("INSTANCE", "unknown")
CHUNK = 64 * 1024
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm holds
        # the body back until the proxy's delayed ACK (40 ms per request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Instance", INSTANCE)
        self.end_headers()
        self.wfile.write(data)

    def body_chunks(self):
        """The request body, chunked or with Content-Length, piece by piece."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, CHUNK))
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                piece = self.rfile.read(min(left, CHUNK))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/ws":
            return self.websocket()
        if url.path == "/headers":
            body = json.dumps({
                "instance": INSTANCE,
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
            })
            return self.reply(200, body, "application/json")
        if url.path == "/download":
            size = int(query["bytes"][0])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = bytes(range(256)) * (CHUNK // 256)
            while size:
                n = min(size, CHUNK)
                self.wfile.write(block[:n])
                size -= n
            return
        if url.path == "/partial":
            # Promises 10 MB, sends 1 MB, then hangs until someone kills the process.
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b"x" * (1024 * 1024))
            self.wfile.flush()
            time.sleep(3600)
            return
        if url.path == "/slow":
            time.sleep(float(query.get("seconds", ["1"])[0]))
        return self.reply(200, INSTANCE)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(INSTANCE)))
        self.end_headers()

    def do_POST(self):
        digest = hashlib.sha256()
        total = 0
        for piece in self.body_chunks():
            digest.update(piece)
            total += len(piece)
        self.reply(200, json.dumps({"instance": INSTANCE, "bytes": total, "sha256": digest.hexdigest()}),
                   "application/json")

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
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode = head[0] & 0x0F
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if length < 126:
                out = bytes([0x80 | opcode, length])
            elif length < 65536:
                out = bytes([0x80 | opcode, 126]) + struct.pack(">H", length)
            else:
                out = bytes([0x80 | opcode, 127]) + struct.pack(">Q", length)
            self.wfile.write(out + payload)
            self.wfile.flush()
            if opcode == 8:
                return


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024


Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
