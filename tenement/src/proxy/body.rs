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
        ProxyBody {
            source: Source::Upstream(body),
            exchange,
        }
    }

    pub(crate) fn local(bytes: Bytes, exchange: Exchange) -> ProxyBody {
        ProxyBody {
            source: Source::Local((!bytes.is_empty()).then_some(bytes)),
            exchange,
        }
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
            }
            Poll::Ready(None) => this.exchange.set_complete(),
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
