//! Which HTTP a new connection speaks: HTTP/2 with prior knowledge starts with a fixed
//! preface, anything else is HTTP/1.x. The first read is a full one (not just the 24 bytes
//! the preface needs): what it brings, usually the whole first request, is handed to hyper
//! ahead of the socket, so hyper reads it in one go.

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FIRST_READ: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Reads until the protocol is known; the bytes read come back in front of the stream.
pub(crate) async fn sniff<IO>(mut io: IO) -> io::Result<(Protocol, Prefixed<IO>)>
where
    IO: AsyncRead + Unpin,
{
    let mut seen = read_some(&mut io).await?;
    let mut read = seen.len();
    let protocol = loop {
        let compared = seen.len().min(PREFACE.len());
        if read == 0 || seen[..compared] != PREFACE[..compared] {
            break Protocol::Http1;
        }
        if seen.len() >= PREFACE.len() {
            break Protocol::Http2;
        }
        // A preface in pieces (rare): gather them.
        let more = read_some(&mut io).await?;
        read = more.len();
        let mut joined = BytesMut::from(&seen[..]);
        joined.extend_from_slice(&more);
        seen = joined.freeze();
    };
    Ok((protocol, Prefixed { prefix: seen, io }))
}

/// One read of up to `FIRST_READ` bytes, kept in an allocation of just their size: the
/// read itself lands on the stack, so a short request costs no big buffer per connection.
async fn read_some<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Bytes> {
    std::future::poll_fn(|cx| {
        let mut storage = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut storage);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled())))
    })
    .await
}

/// A stream with bytes already read from it put back in front.
pub(crate) struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    /// Takes the bytes read ahead, for a reader that reads the stream itself from here.
    pub(crate) fn take_prefix(&mut self) -> Bytes {
        std::mem::take(&mut self.prefix)
    }

    /// Puts `bytes` in front of what is still to be read, once the prefix was taken.
    pub(crate) fn put_back(&mut self, bytes: Bytes) {
        debug_assert!(self.prefix.is_empty(), "the prefix was taken first");
        self.prefix = bytes;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn sniffed(sent: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        let sent: Vec<Vec<u8>> = sent.iter().map(|s| s.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for piece in sent {
                client.write_all(&piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let (protocol, mut stream) = sniff(server).await.unwrap();
        writer.await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        (protocol, all)
    }

    #[tokio::test]
    async fn tells_http2_from_http1_and_loses_nothing() {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            sniffed(&[request]).await,
            (Protocol::Http1, request.to_vec())
        );
        let h2 = [PREFACE, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"].concat();
        assert_eq!(
            sniffed(&[&h2[..10], &h2[10..]]).await,
            (Protocol::Http2, h2.clone())
        );
        // Starts like the preface, then is not.
        assert_eq!(sniffed(&[b"PRI * HTTP/1.1\r\n"]).await.0, Protocol::Http1);
        assert_eq!(sniffed(&[]).await, (Protocol::Http1, Vec::new()));
    }
}
