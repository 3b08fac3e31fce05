//! The last answer on a connection leaves together with the connection's end.
//!
//! When a request asks for its connection to be closed after the answer (`Connection:
//! close`, or HTTP/1.0 without keep-alive), hyper writes the answer and shuts the socket
//! down right after. Written as they come, the answer and the FIN are two segments; the
//! client's kernel (on loopback, in the proxy's own time) handles both, and the client is
//! woken twice. So once the answer's body is all in hand, its socket is corked
//! (`TCP_CORK`): the write is held back, and the shutdown that follows tacks the FIN onto
//! the same segment and sends it. One packet less for every such request.
//!
//! Only the end is held (full segments still go out), and the kernel sends a corked segment
//! after 200 ms at most, so nothing can wait longer than that even if no shutdown came.

use std::os::fd::RawFd;

use super::headers::RequestFacts;

/// The TCP socket under one plain HTTP/1 client connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cork(RawFd);

impl Cork {
    /// `socket` must stay open for as long as requests of its connection are answered: a
    /// `Cork` is used only while hyper writes an answer on that connection.
    pub(crate) fn new(socket: RawFd) -> Cork {
        Cork(socket)
    }

    /// Holds back what is written next until the shutdown (or 200 ms).
    pub(crate) fn hold(self) {
        let on: libc::c_int = 1;
        // SAFETY: a plain integer option on a socket the connection keeps open (see `new`).
        let set = unsafe {
            libc::setsockopt(
                self.0,
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                std::ptr::from_ref(&on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            // Only a missed saving: the answer goes out as it would have.
            tracing::debug!(
                "corking a closing connection: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Whether the request asks for its connection to end after its answer (RFC 9112 9.3):
/// `close` among the `Connection` tokens, or HTTP/1.0 without `keep-alive`. Never an
/// upgrade: after its `101` the connection carries the tunnel, which must not be held back.
pub(crate) fn ends_connection<V: ?Sized>(
    version: http::Version,
    facts: &RequestFacts<'_, V>,
) -> bool {
    if facts.upgrade {
        return false;
    }
    match version {
        http::Version::HTTP_11 => facts.close,
        http::Version::HTTP_10 | http::Version::HTTP_09 => facts.close || !facts.keep_alive,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Version};

    use super::ends_connection;
    use crate::proxy::headers::RequestFacts;

    #[test]
    fn which_requests_end_their_connection() {
        // (version, Connection, Upgrade) -> the answer is the connection's last
        for (version, connection, upgrade, ends) in [
            (Version::HTTP_11, None, false, false),
            (Version::HTTP_11, Some("close"), false, true),
            (Version::HTTP_11, Some("Keep-Alive"), false, false),
            (Version::HTTP_11, Some("upgrade, close"), true, false),
            (Version::HTTP_10, None, false, true),
            (Version::HTTP_10, Some("keep-alive"), false, false),
            (Version::HTTP_10, Some("keep-alive, Close"), false, true),
            (Version::HTTP_2, Some("close"), false, false),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(value) = connection {
                headers.insert(http::header::CONNECTION, value.parse().unwrap());
            }
            if upgrade {
                headers.insert(http::header::UPGRADE, "websocket".parse().unwrap());
            }
            assert_eq!(
                ends_connection(version, &RequestFacts::of(&headers)),
                ends,
                "{version:?} Connection: {connection:?} upgrade: {upgrade}"
            );
        }
    }
}
