"""A hostile tenant for the network boundary tests: an HTTP app on $PORT (bound on $BIND_HOST,
127.0.0.1 by default) that, on request, tries what a tenant should not be able to do from
inside its instance, and answers with the outcome: `ok` or the errno name (`EPERM`).

  /                               hello from $TENANT
  /connect?host=H&port=P          TCP connect to H:P
  /udp?host=H&port=P              one UDP datagram to H:P
  /bind?host=H&port=P             bind and listen on H:P (kept open)
  /hold?low=L&high=H              bind every port of L..H it can (kept open): how many
  /grab?port=P&seconds=S          for S seconds, keep trying to bind 127.0.0.1:P and answer
                                  whatever connects with "stolen"; returns at once
  /grabbed                        how many binds the grab loop won, and requests it stole
  /fetch?port=P&host=NAME         GET / on 127.0.0.1:P with `Host: NAME`: the status and body
Standard library only."""

import errno
import http.server
import os
import socket
import threading
import time
import urllib.parse

TENANT = os.environ.get("TENANT", "?")
held = []
grab = {"binds": 0, "stolen": 0}


def outcome(action):
    try:
        action()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(host, port):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
    finally:
        s.close()


def udp(host, port):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    try:
        s.sendto(b"probe", (host, port))
    finally:
        s.close()


def bind(host, port):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen(16)
    except OSError:
        s.close()
        raise
    held.append(s)
    return s


def hold(low, high):
    count = 0
    for port in range(low, high + 1):
        try:
            bind("127.0.0.1", port)
            count += 1
        except OSError:
            pass
    return count


def steal(server):
    server.settimeout(0.2)
    while True:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        grab["stolen"] += 1
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nstolen\n")
        finally:
            conn.close()


def grab_loop(port, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            server = bind("127.0.0.1", port)
        except OSError:
            continue
        grab["binds"] += 1
        threading.Thread(target=steal, args=(server,), daemon=True).start()


def fetch(port, host):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ")[1].decode() if head else "none"
    return f"{status} {body.decode(errors='replace')}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        host, port = q.get("host", ""), int(q.get("port", "0"))
        if url.path == "/connect":
            body = outcome(lambda: connect(host, port))
        elif url.path == "/udp":
            body = outcome(lambda: udp(host, port))
        elif url.path == "/bind":
            body = outcome(lambda: bind(host, port))
        elif url.path == "/hold":
            body = str(hold(int(q["low"]), int(q["high"])))
        elif url.path == "/grab":
            threading.Thread(
                target=grab_loop, args=(port, float(q["seconds"])), daemon=True
            ).start()
            body = "started"
        elif url.path == "/grabbed":
            body = f"{grab['binds']} {grab['stolen']}"
        elif url.path == "/fetch":
            try:
                body = fetch(port, host)
            except OSError as e:
                body = errno.errorcode.get(e.errno, str(e))
        else:
            body = f"hello from {TENANT}"
        data = (body + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


bind_host = os.environ.get("BIND_HOST", "127.0.0.1")
server_class = http.server.ThreadingHTTPServer
if ":" in bind_host:
    server_class.address_family = socket.AF_INET6
server = server_class((bind_host, int(os.environ["PORT"])), Handler)
print(f"{TENANT} listening on {server.server_address}", flush=True)
server.serve_forever()
