//! Instances written against the socket, for tests that need answers no web framework would
//! send: a threaded Python server on `$PORT` that reads each request (its head, and a body
//! of `Content-Length` bytes) and hands it to the test's own `handle`.

/// Reads requests and calls `handle(conn, method, path, head, body)` for each; it answers
/// with `conn.sendall`, and returns `False` to end the connection.
const SERVE: &str = r#"
import os, socket, threading

def serve(conn):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                conn.close()
                return
            data += more
        head, data = data.split(b"\r\n\r\n", 1)
        method, path = head.split(b" ")[:2]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) < length:
            data += conn.recv(65536)
        body, data = data[:length], data[length:]
        if handle(conn, method.decode(), path.decode(), head, body) is False:
            conn.close()
            return

def listen():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(os.environ["PORT"])))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// The whole program: `handler` (Python defining `handle`, see `SERVE`) and the server.
pub fn program(handler: &str) -> String {
    format!("{SERVE}\n{handler}\nlisten()\n")
}
