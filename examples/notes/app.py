#!/usr/bin/python3
"""A tiny notes service: one SQLite file per tenant, in the DATA_DIR tenement gives it.

GET /notes lists the tenant's notes, POST /notes stores the request body as a note,
GET /health answers 200. It listens where tenement says: on the socket tenement holds for
it (fd 3, with `socket_activation = true`: LISTEN_FDS=1 and LISTEN_PID = this process), or
else on 127.0.0.1:$PORT.
"""
import json
import os
import socket
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DB = os.path.join(os.environ.get("DATA_DIR", "."), "notes.db")
TENANT = os.environ.get("TENEMENT_INSTANCE", "?")


def db():
    conn = sqlite3.connect(DB)
    conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    return conn


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body are two writes: on a kept-alive connection, Nagle's algorithm would hold
    # the body back until the client's delayed ACK, ~40 ms later. TCP_NODELAY sends both now.
    disable_nagle_algorithm = True

    def reply(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"ok": True})
        if self.path == "/notes":
            with db() as conn:
                notes = [row[0] for row in conn.execute("SELECT text FROM notes ORDER BY id")]
            return self.reply(200, {"tenant": TENANT, "notes": notes})
        self.reply(404, {"error": "try GET /notes or POST /notes"})

    def do_POST(self):
        if self.path != "/notes":
            return self.reply(404, {"error": "try POST /notes"})
        length = int(self.headers.get("Content-Length", 0))
        text = self.rfile.read(length).decode("utf-8", "replace")
        with db() as conn:
            conn.execute("INSERT INTO notes (text) VALUES (?)", (text,))
        self.reply(201, {"tenant": TENANT, "stored": text})

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


def held_socket():
    """The listening socket tenement passed (systemd's protocol), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=3)


class Server(ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    held = held_socket()
    if held is not None:
        server = Server(held.getsockname(), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = held
        print(f"notes for {TENANT} serving the socket tenement holds: {held.getsockname()}", flush=True)
    else:
        port = int(os.environ["PORT"])
        server = Server(("127.0.0.1", port), Handler)
        print(f"notes for {TENANT} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
