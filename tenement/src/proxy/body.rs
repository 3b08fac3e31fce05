//! The body of every response the proxy sends: streamed from the instance frame by frame
//! (never collected), or a short text the proxy wrote itself. When it is dropped, the
//! request's bookkeeping (activity guard, access log) is closed.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::{exchange::Exchange, upstream::UpstreamBody};

pub struct ProxyBody {
    source: Source,
    exchange: Exchange,
}

enum Source {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(body: UpstreamBody, exchange: Exchange) -> ProxyBody {
        ProxyBody::new(Source::Upstream(body), exchange)
    }

    pub(crate) fn local(bytes: Bytes, exchange: Exchange) -> ProxyBody {
        ProxyBody::new(
            Source::Local((!bytes.is_empty()).then_some(bytes)),
            exchange,
        )
    }

    fn new(source: Source, exchange: Exchange) -> ProxyBody {
        let mut body = ProxyBody { source, exchange };
        // Nothing to stream (hyper will not even ask): the head is the whole answer.
        if body.is_end_stream() {
            body.exchange.answer_in_hand();
        }
        body
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Upstream(body) => Pin::new(body).poll_frame(cx),
            Source::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange.add_bytes(data.len());
                }
                if this.is_end_stream() {
                    this.exchange.answer_in_hand();
                }
            }
            Poll::Ready(None) => {
                this.exchange.answer_in_hand();
                this.exchange.set_complete();
            }
            // The instance broke off mid-response: the error makes hyper end the response
            // without a proper end (no final chunk, or short of Content-Length) and close
            // the client connection, so the client sees a truncated reply and never waits.
            Poll::Ready(Some(Err(error))) => {
                tracing::debug!("upstream body failed: {error}");
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(body) => body.is_end_stream(),
            Source::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(body) => body.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is empty.
        if self.is_end_stream() {
            self.exchange.set_complete();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::{AsRawFd, RawFd},
    };

    use http_body_util::BodyExt;

    use super::*;
    use crate::proxy::cork::Cork;

    fn corked(socket: RawFd) -> bool {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int option read into an int of the given length.
        let got = unsafe {
            libc::getsockopt(
                socket,
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(got, 0, "{}", std::io::Error::last_os_error());
        value != 0
    }

    fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (client, listener.accept().unwrap().0)
    }

    fn exchange(closing: Option<&TcpStream>) -> Exchange {
        let mut exchange = Exchange::begin(&http::Request::new(()), None, None);
        if let Some(socket) = closing {
            exchange.set_closing(Cork::new(socket.as_raw_fd()));
        }
        exchange
    }

    #[tokio::test]
    async fn the_last_answer_of_a_closing_connection_is_corked_once_all_in_hand() {
        let (_client, server) = connection();
        let mut body = ProxyBody::local(Bytes::from_static(b"hello"), exchange(Some(&server)));
        assert!(
            !corked(server.as_raw_fd()),
            "nothing is held before the answer is in hand"
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), "hello");
        assert!(corked(server.as_raw_fd()));
    }

    #[tokio::test]
    async fn an_empty_answer_is_corked_at_once_and_a_kept_connection_never() {
        let (_client, server) = connection();
        let _empty = ProxyBody::local(Bytes::new(), exchange(Some(&server)));
        assert!(
            corked(server.as_raw_fd()),
            "hyper writes the head alone: held for the FIN"
        );

        let (_client, kept) = connection();
        let mut body = ProxyBody::local(Bytes::from_static(b"hello"), exchange(None));
        body.frame().await.unwrap().unwrap();
        assert!(!corked(kept.as_raw_fd()));
    }
}
