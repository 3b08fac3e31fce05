//! What goes to a client next, gathered so that it leaves in as few writes as it can: small
//! things (a response head, chunk sizes, short bodies) copied into one buffer, big pieces of
//! body kept as they were read from the instance, all in order, then written with one
//! vectored write.

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Slices handed to one `writev` at most (far below any `IOV_MAX`).
const MAX_SLICES: usize = 32;

#[derive(Default)]
pub(crate) struct Outbox {
    /// Pieces to write first, in order.
    pieces: Vec<Bytes>,
    /// Copied bytes, written after every piece.
    tail: BytesMut,
}

impl Outbox {
    /// Where bytes to copy go: after everything held so far.
    pub(crate) fn tail(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Appends `piece` as it is, without a copy.
    pub(crate) fn share(&mut self, piece: Bytes) {
        if !self.tail.is_empty() {
            self.pieces.push(self.tail.split().freeze());
        }
        self.pieces.push(piece);
    }

    /// Bytes waiting to be written.
    pub(crate) fn held(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum::<usize>() + self.tail.len()
    }

    /// Writes everything held.
    pub(crate) async fn flush<IO: AsyncWrite + Unpin>(&mut self, io: &mut IO) -> io::Result<()> {
        while !self.pieces.is_empty() || !self.tail.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for piece in self.pieces.iter().take(MAX_SLICES - 1) {
                    slices[count] = IoSlice::new(piece);
                    count += 1;
                }
                if self.pieces.len() < MAX_SLICES {
                    slices[count] = IoSlice::new(&self.tail);
                    count += 1;
                }
                io.write_vectored(&slices[..count]).await?
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.consume(written);
        }
        Ok(())
    }

    /// Drops the first `written` bytes, which went out.
    fn consume(&mut self, mut written: usize) {
        let mut whole = 0;
        for piece in &mut self.pieces {
            if written < piece.len() {
                piece.advance(written);
                written = 0;
                break;
            }
            written -= piece.len();
            whole += 1;
        }
        self.pieces.drain(..whole);
        self.tail.advance(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn everything_arrives_in_order_through_short_writes() {
        // A pipe that takes 7 bytes at a time: every write is a short one.
        let (mut writer, mut reader) = tokio::io::duplex(7);
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        for round in 0..3 {
            let head = format!("head {round}\r\n");
            outbox.tail().extend_from_slice(head.as_bytes());
            expected.extend_from_slice(head.as_bytes());
            let piece = Bytes::from(format!("a shared piece of body, round {round}"));
            outbox.share(piece.clone());
            expected.extend_from_slice(&piece);
            outbox.tail().extend_from_slice(b"\r\n");
            expected.extend_from_slice(b"\r\n");
        }
        // More pieces than one write takes.
        for piece in 0..(MAX_SLICES * 2) {
            let piece = Bytes::from(piece.to_string());
            expected.extend_from_slice(&piece);
            outbox.share(piece);
        }
        assert_eq!(outbox.held(), expected.len());
        outbox.flush(&mut writer).await.unwrap();
        assert_eq!(outbox.held(), 0);
        outbox.tail().extend_from_slice(b"after");
        expected.extend_from_slice(b"after");
        outbox.flush(&mut writer).await.unwrap();
        drop(writer);
        assert_eq!(reading.await.unwrap(), expected);
    }
}
