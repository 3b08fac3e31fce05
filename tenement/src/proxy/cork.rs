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
/// `close` among the `Connection` tokens, or HTTP/1.0 without `keep-alive`.
pub(crate) fn ends_connection(version: http::Version, close: bool, keep_alive: bool) -> bool {
    match version {
        http::Version::HTTP_11 => close,
        http::Version::HTTP_10 | http::Version::HTTP_09 => close || !keep_alive,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use http::Version;

    use super::ends_connection;

    #[test]
    fn which_requests_end_their_connection() {
        // (version, close, keep-alive) -> the answer is the connection's last
        for (version, close, keep_alive, ends) in [
            (Version::HTTP_11, false, false, false),
            (Version::HTTP_11, true, false, true),
            (Version::HTTP_11, false, true, false),
            (Version::HTTP_10, false, false, true),
            (Version::HTTP_10, false, true, false),
            (Version::HTTP_10, true, true, true),
            (Version::HTTP_2, true, false, false),
        ] {
            assert_eq!(
                ends_connection(version, close, keep_alive),
                ends,
                "{version:?} close={close} keep-alive={keep_alive}"
            );
        }
    }
}
