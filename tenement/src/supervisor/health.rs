//! Is an instance up? Its port accepts connections and, when the service has a `health`
//! path, `GET {health}` answers 2xx.

use std::{net::Ipv4Addr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
    time::timeout,
};

/// How often a starting instance's port is tried: short, so a fast app is seen ready fast.
const CONNECT_POLL: Duration = Duration::from_millis(15);
/// One health request may take this long at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a health answer read before giving up on its end...
const MAX_ANSWER: usize = 1024 * 1024;
/// ...or how long it may pause (a server that ignores `Connection: close`).
const ANSWER_PAUSE: Duration = Duration::from_millis(200);

/// Returns once the port accepts a connection, or once `listening` is notified (the kernel
/// saw the instance start listening). Runs until cancelled.
pub async fn wait_listening(port: u16, listening: &Notify) {
    let polling = async {
        loop {
            if accepts(port).await {
                return;
            }
            tokio::time::sleep(CONNECT_POLL).await;
        }
    };
    tokio::select! {
        () = polling => {}
        () = listening.notified() => {}
    }
}

async fn accepts(port: u16) -> bool {
    matches!(
        timeout(
            CONNECT_POLL * 10,
            TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// One check: the port accepts, and `GET path` (if any) answers 2xx. The error says what
/// failed, for the instance's log.
pub async fn check(port: u16, path: Option<&str>, wait: Duration) -> Result<(), String> {
    let wait = wait.min(PROBE_TIMEOUT);
    match path {
        None => match timeout(wait, TcpStream::connect((Ipv4Addr::LOCALHOST, port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!("port {port} refused a connection: {err}")),
            Err(_) => Err(format!("port {port} did not accept within {wait:?}")),
        },
        Some(path) => match timeout(wait, get_status(port, path)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(format!("GET {path} answered {status}")),
            Ok(Err(err)) => Err(format!("GET {path} on port {port} failed: {err}")),
            Err(_) => Err(format!(
                "GET {path} on port {port} gave no answer within {wait:?}"
            )),
        },
    }
}

/// The status code of `GET path` on 127.0.0.1:port (HTTP/1.1, connection closed after).
async fn get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: tenement-health\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all that matters, but the rest of the answer is read too (bounded,
    // until the server closes or pauses): closing early would make the app fail writing it
    // and log a broken pipe.
    let mut head = Vec::with_capacity(256);
    let mut buffer = [0u8; 4096];
    let mut total = 0usize;
    loop {
        let read = if head.contains(&b'\n') {
            match timeout(ANSWER_PAUSE, stream.read(&mut buffer)).await {
                Ok(read) => read?,
                Err(_) => break,
            }
        } else {
            stream.read(&mut buffer).await?
        };
        if read == 0 || total > MAX_ANSWER {
            break;
        }
        total += read;
        if head.len() < 1024 {
            head.extend_from_slice(&buffer[..read.min(1024 - head.len())]);
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {line:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn health_needs_a_2xx_answer() {
        let ok = server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = server("HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let garbage = server("hello\n").await;
        let wait = Duration::from_secs(2);
        assert_eq!(check(ok, Some("/health"), wait).await, Ok(()));
        assert!(check(bad, Some("/health"), wait)
            .await
            .unwrap_err()
            .contains("503"));
        assert!(check(garbage, Some("/h"), wait).await.is_err());
        assert_eq!(check(ok, None, wait).await, Ok(()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(check(closed, None, wait).await.is_err());
    }
}
