//! The body of every response the proxy sends: streamed from the instance frame by frame
//! (never collected), or a short text the proxy wrote itself. When it ends, the upstream
//! connection goes back to its pool and the request's bookkeeping is closed.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{exchange::Exchange, pool::Lease};

pub struct ProxyBody {
    source: Source,
    exchange: Exchange,
}

enum Source {
    Upstream {
        body: Incoming,
        lease: Option<Lease>,
    },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming, lease: Option<Lease>, exchange: Exchange) -> ProxyBody {
        ProxyBody {
            source: Source::Upstream { body, lease },
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
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
            Source::Upstream { body, .. } => body.is_end_stream(),
            Source::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream { body, .. } => body.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.is_end_stream() {
            self.exchange.set_complete();
        }
        let ended = self.exchange.is_complete();
        if let Source::Upstream { lease, .. } = &mut self.source {
            // Only a connection whose response was read to the end can carry the next one.
            if let Some(lease) = lease.take().filter(|_| ended) {
                lease.release();
            }
        }
    }
}
