//! One HTTP/1.1 connection to an instance, driven from the task of the request that uses
//! it: write the request (streaming its body), read the response head, then let the
//! response body read straight from the socket as the client takes it. Keep-alive
//! connections go back to their pool when their response has been read through.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{header::CONTENT_LENGTH, request, response, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::endpoint::{Endpoint, Stream};

use super::{
    http1::{self, Chunk, ChunkedDecoder, Forwarded, Framing, WireError},
    pool::Pool,
};

/// 1xx responses (`100 Continue`, `103 Early Hints`) skipped before the final one at most.
const MAX_INFORMATIONAL: u32 = 8;
/// Small pieces of request body are gathered into one write up to this size.
const GATHER: usize = 16 * 1024;
/// Bytes asked from the socket per read: small for heads, growing while big bodies fill
/// every read.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) enum UpstreamError {
    Refused {
        endpoint: Endpoint,
    },
    Connect {
        endpoint: Endpoint,
        error: io::Error,
    },
    Io {
        endpoint: Endpoint,
        error: io::Error,
    },
    Wire {
        endpoint: Endpoint,
        error: WireError,
    },
    ClosedEarly {
        endpoint: Endpoint,
    },
}

impl UpstreamError {
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, UpstreamError::Refused { .. })
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Refused { endpoint } => {
                write!(f, "refused the connection on {endpoint}")
            }
            UpstreamError::Connect { endpoint, error } => {
                write!(f, "could not be reached on {endpoint}: {error}")
            }
            UpstreamError::Io { endpoint, error } => write!(f, "failed on {endpoint}: {error}"),
            UpstreamError::Wire { endpoint, error } => write!(f, "on {endpoint} {error}"),
            UpstreamError::ClosedEarly { endpoint } => {
                write!(f, "closed the connection on {endpoint} without answering")
            }
        }
    }
}

pub(crate) struct Upstream {
    stream: Stream,
    endpoint: Endpoint,
    read_buf: BytesMut,
    read_size: usize,
    write_buf: BytesMut,
    /// Has carried a response before: an error before any answer may just mean the
    /// instance closed it while it sat idle, and the request can go again on a new one.
    reused: bool,
}

impl Upstream {
    /// Boxed: a connection moves between the pool, the request and the response body, and
    /// stays where it is in memory while its handle moves.
    pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Box<Upstream>, UpstreamError> {
        let stream = endpoint.connect().await.map_err(|error| {
            let endpoint = endpoint.clone();
            if error.kind() == io::ErrorKind::ConnectionRefused {
                UpstreamError::Refused { endpoint }
            } else {
                UpstreamError::Connect { endpoint, error }
            }
        })?;
        if let Stream::Tcp(tcp) = &stream {
            // Small requests and responses must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
        }
        Ok(Box::new(Upstream {
            stream,
            endpoint: endpoint.clone(),
            read_buf: BytesMut::new(),
            read_size: READ_MIN,
            write_buf: BytesMut::new(),
            reused: false,
        }))
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// False when the instance has closed the idle connection or sent something unasked.
    /// Costs no system call while the socket is quiet.
    pub(crate) fn is_usable(&self) -> bool {
        self.stream.is_usable()
    }

    /// Reads more into `read_buf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.is_empty() {
            // Back to the buffer's front once no answer holds a piece of it: each response
            // lands on the same few cache lines instead of walking through the buffer, which
            // with hundreds of connections means memory the cache no longer holds.
            let _ = self.read_buf.try_reclaim(self.read_size);
        }
        if self.read_buf.capacity() - self.read_buf.len() < self.read_size / 2 {
            self.read_buf.reserve(self.read_size);
        }
        // `poll_read` rather than `try_read_buf`: after a short read tokio knows the socket is
        // drained and waits for the next event instead of trying a read that would block.
        let spare = self.read_buf.spare_capacity_mut();
        let room = spare.len();
        let mut read_buf = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read_buf))?;
        let filled = read_buf.filled().len();
        if filled == room {
            self.read_size = (self.read_size * 2).min(READ_MAX);
        }
        // SAFETY: `poll_read` initialized the first `filled` bytes of the spare capacity.
        unsafe { self.read_buf.set_len(self.read_buf.len() + filled) };
        Poll::Ready(Ok(filled))
    }

    /// Drops buffers grown past what ordinary requests need (a huge request head, a
    /// response read in big pieces): an idle pooled connection holds at most a little.
    fn shed_buffers(&mut self) {
        if self.write_buf.capacity() > 2 * GATHER {
            self.write_buf = BytesMut::new();
        }
        if self.read_buf.capacity() > 2 * READ_MAX {
            self.read_buf = BytesMut::new();
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Writes the head and streams the body. A body of unknown length goes out chunked.
    async fn write_request(
        &mut self,
        parts: &request::Parts,
        forwarded: &Forwarded,
        upgrade: bool,
        body: &mut Incoming,
    ) -> io::Result<()> {
        let has_body = !body.is_end_stream();
        let chunked = has_body && !parts.headers.contains_key(CONTENT_LENGTH);
        self.write_buf.clear();
        http1::encode_request_head(parts, forwarded, upgrade, chunked, &mut self.write_buf);
        if !has_body {
            return self.stream.write_all(&self.write_buf).await;
        }
        loop {
            // Gather what is at hand into one write; wait only with nothing left to send.
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    self.flush_write_buf().await?;
                    body.frame().await
                }
            };
            match frame {
                None => break,
                Some(Err(error)) => return Err(io::Error::other(error)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if chunked {
                            if data.is_empty() {
                                continue;
                            }
                            http1::chunk_header(data.len(), &mut self.write_buf);
                        }
                        if data.len() >= GATHER {
                            self.flush_write_buf().await?;
                            self.stream.write_all(&data).await?;
                        } else {
                            self.write_buf.extend_from_slice(&data);
                        }
                        if chunked {
                            self.write_buf.extend_from_slice(b"\r\n");
                        }
                        if self.write_buf.len() >= GATHER {
                            self.flush_write_buf().await?;
                        }
                    }
                    Err(frame) => {
                        if chunked {
                            http1::last_chunk(frame.trailers_ref(), &mut self.write_buf);
                            return self.flush_write_buf().await;
                        }
                    }
                },
            }
        }
        if chunked {
            http1::last_chunk(None, &mut self.write_buf);
        }
        self.flush_write_buf().await
    }

    /// Writes a request as `send` has it.
    async fn write(&mut self, outgoing: &mut Outgoing<'_>) -> io::Result<()> {
        match outgoing {
            Outgoing::Parsed {
                parts,
                body,
                forwarded,
            } => self.write_request(parts, forwarded, false, body).await,
            Outgoing::Encoded { head, .. } => self.stream.write_all(head).await,
        }
    }

    async fn flush_write_buf(&mut self) -> io::Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// The final response head (informational ones are skipped, except 101).
    async fn read_head(&mut self) -> Result<response::Parts, ReadHeadError> {
        let mut informational = 0;
        // Parsed only once its end is in: a head trickled a byte at a time costs one scan.
        let mut searched = 0;
        loop {
            let complete = http1::head_end(&self.read_buf, searched).is_some();
            searched = self.read_buf.len();
            let parsed = if complete || self.read_buf.len() >= http1::MAX_HEAD {
                http1::parse_response_head(&mut self.read_buf)
            } else {
                Ok(None)
            };
            match parsed {
                Ok(Some(parts))
                    if parts.status.is_informational()
                        && parts.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    informational += 1;
                    if informational > MAX_INFORMATIONAL {
                        return Err(ReadHeadError::Wire(WireError::Malformed(format!(
                            "more than {MAX_INFORMATIONAL} informational (1xx) responses"
                        ))));
                    }
                    searched = 0;
                    continue;
                }
                Ok(Some(parts)) => return Ok(parts),
                Ok(None) => {}
                Err(error) => return Err(ReadHeadError::Wire(error)),
            }
            let received = !self.read_buf.is_empty();
            match self.fill().await {
                Ok(0) if received => {
                    // Cut off, or never HTTP at all: say which when the bytes tell.
                    return Err(match http1::parse_response_head(&mut self.read_buf) {
                        Err(error) => ReadHeadError::Wire(error),
                        _ => ReadHeadError::Io(io::ErrorKind::UnexpectedEof.into()),
                    });
                }
                Ok(0) => return Err(ReadHeadError::NothingReceived(None)),
                Ok(_) => {}
                Err(error) if !received => return Err(ReadHeadError::NothingReceived(Some(error))),
                Err(error) => return Err(ReadHeadError::Io(error)),
            }
        }
    }

    /// The socket and whatever the instance already sent past the response head.
    pub(crate) fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.read_buf)
    }
}

enum ReadHeadError {
    /// The connection ended (or failed) before a single byte of answer.
    NothingReceived(Option<io::Error>),
    Io(io::Error),
    Wire(WireError),
}

/// A request that could not be answered, with the request itself when it never left
/// (so that the caller may send it elsewhere).
pub(crate) type Failed = (UpstreamError, Option<Request<Incoming>>);

/// A request on its way to an instance, as `send` writes it.
// Not boxed: either lives in the request's own future, and boxing would allocate per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outgoing<'a> {
    /// One hyper parsed: its head is encoded as it goes, its body streamed.
    Parsed {
        parts: request::Parts,
        body: Incoming,
        forwarded: &'a Forwarded,
    },
    /// A request without a body whose head the proxy encoded already (`direct.rs`).
    Encoded { method: Method, head: &'a [u8] },
}

impl Outgoing<'_> {
    fn method(&self) -> &Method {
        match self {
            Outgoing::Parsed { parts, .. } => &parts.method,
            Outgoing::Encoded { method, .. } => method,
        }
    }

    fn without_body(&self) -> bool {
        match self {
            Outgoing::Parsed { body, .. } => body.is_end_stream(),
            Outgoing::Encoded { .. } => true,
        }
    }
}

/// Sends `request` to the instance at `endpoint` over a pooled connection, or a new one.
pub(crate) async fn send(
    pool: &Arc<Pool>,
    endpoint: &Endpoint,
    request: Request<Incoming>,
    forwarded: &Forwarded,
) -> Result<Response<UpstreamBody>, Failed> {
    let (parts, body) = request.into_parts();
    let mut outgoing = Outgoing::Parsed {
        parts,
        body,
        forwarded,
    };
    send_outgoing(pool, endpoint, &mut outgoing)
        .await
        .map_err(|(error, unsent)| {
            let unsent = unsent.then(|| match outgoing {
                Outgoing::Parsed { parts, body, .. } => Request::from_parts(parts, body),
                Outgoing::Encoded { .. } => unreachable!("made as parsed above"),
            });
            (error, unsent)
        })
}

/// `send` for any request, which stays the caller's (borrowed, not moved: it is big). On
/// failure, `true` says that it never left, so the caller may send it again.
pub(crate) async fn send_outgoing(
    pool: &Arc<Pool>,
    endpoint: &Endpoint,
    outgoing: &mut Outgoing<'_>,
) -> Result<Response<UpstreamBody>, (UpstreamError, bool)> {
    // Connecting is boxed: it is rare next to the pool, and would make every request's
    // future bigger.
    let mut connection = match pool.take(endpoint) {
        Some(connection) => connection,
        None => match Box::pin(Upstream::connect(endpoint)).await {
            Ok(connection) => connection,
            Err(error) => return Err((error, true)),
        },
    };
    let without_body = outgoing.without_body();
    // A request without a body whose method may be repeated (RFC 9110 9.2.2) goes again
    // once when its connection ended before a byte of answer: the instance may have crashed
    // or been stopped under it. If that fails the same way (or the new connection is
    // refused), the request comes back to the caller, which waits for the next process.
    let repeatable = without_body && outgoing.method().is_idempotent();
    let mut repeated = false;
    loop {
        let written = connection.write(outgoing).await;
        let write_failed = written.is_err();
        // Even when writing failed, the instance may have answered (e.g. 413) and closed.
        let head = connection.read_head().await;
        let head = match (head, written) {
            (Ok(head), _) => head,
            (Err(ReadHeadError::NothingReceived(_)), _)
                if !repeated && (repeatable || (connection.reused && without_body)) =>
            {
                // The instance closed the idle connection just as it was picked (the
                // request reached nobody), or went away while it had the request: it goes
                // again on a new connection.
                repeated = true;
                connection = match Box::pin(Upstream::connect(endpoint)).await {
                    Ok(connection) => connection,
                    Err(error) => return Err((error, true)),
                };
                continue;
            }
            (Err(ReadHeadError::NothingReceived(error)), _) if repeatable => {
                let endpoint = endpoint.clone();
                let error = match error {
                    Some(error) => UpstreamError::Io { endpoint, error },
                    None => UpstreamError::ClosedEarly { endpoint },
                };
                return Err((error, true));
            }
            (Err(_), Err(error)) => {
                return Err((
                    UpstreamError::Io {
                        endpoint: endpoint.clone(),
                        error,
                    },
                    false,
                ))
            }
            (
                Err(ReadHeadError::NothingReceived(Some(error)) | ReadHeadError::Io(error)),
                Ok(()),
            ) => {
                return Err((
                    UpstreamError::Io {
                        endpoint: endpoint.clone(),
                        error,
                    },
                    false,
                ))
            }
            (Err(ReadHeadError::NothingReceived(None)), Ok(())) => {
                return Err((
                    UpstreamError::ClosedEarly {
                        endpoint: endpoint.clone(),
                    },
                    false,
                ))
            }
            (Err(ReadHeadError::Wire(error)), Ok(())) => {
                return Err((
                    UpstreamError::Wire {
                        endpoint: endpoint.clone(),
                        error,
                    },
                    false,
                ))
            }
        };
        let framing = match http1::response_framing(outgoing.method(), &head) {
            Ok(framing) => framing,
            Err(error) => {
                return Err((
                    UpstreamError::Wire {
                        endpoint: endpoint.clone(),
                        error,
                    },
                    false,
                ))
            }
        };
        // After a 2xx to CONNECT the instance may treat the connection as a tunnel: never
        // hand it to another request.
        let reusable = !write_failed
            && outgoing.method() != Method::CONNECT
            && http1::keeps_alive(&head, framing)
            && head.status != StatusCode::SWITCHING_PROTOCOLS;
        let body = UpstreamBody {
            decoder: Decoder::for_framing(framing),
            connection: Some(connection),
            reusable,
            pool: pool.clone(),
        };
        return Ok(Response::from_parts(head, body));
    }
}

/// Sends an `Upgrade` request on a new connection. On `101`, the socket comes back with the
/// response for the caller to splice; otherwise the response is an ordinary one.
pub(crate) async fn send_upgrade(
    endpoint: &Endpoint,
    request: Request<Incoming>,
    forwarded: &Forwarded,
) -> Result<(Response<()>, Result<(Stream, BytesMut), UpstreamBody>), Failed> {
    let mut connection = match Upstream::connect(endpoint).await {
        Ok(connection) => connection,
        Err(error) => return Err((error, Some(request))),
    };
    let method = request.method().clone();
    let (parts, mut body) = request.into_parts();
    let written = connection
        .write_request(&parts, forwarded, true, &mut body)
        .await;
    let head = match (connection.read_head().await, written) {
        (Ok(head), _) => head,
        (Err(_), Err(error)) => {
            return Err((
                UpstreamError::Io {
                    endpoint: endpoint.clone(),
                    error,
                },
                None,
            ))
        }
        (Err(ReadHeadError::Wire(error)), _) => {
            return Err((
                UpstreamError::Wire {
                    endpoint: endpoint.clone(),
                    error,
                },
                None,
            ))
        }
        (Err(ReadHeadError::NothingReceived(None)), _) => {
            return Err((
                UpstreamError::ClosedEarly {
                    endpoint: endpoint.clone(),
                },
                None,
            ))
        }
        (Err(ReadHeadError::NothingReceived(Some(error)) | ReadHeadError::Io(error)), _) => {
            return Err((
                UpstreamError::Io {
                    endpoint: endpoint.clone(),
                    error,
                },
                None,
            ))
        }
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Response::from_parts(head, ()), Ok(connection.into_parts())));
    }
    let framing = match http1::response_framing(&method, &head) {
        Ok(framing) => framing,
        Err(error) => {
            return Err((
                UpstreamError::Wire {
                    endpoint: endpoint.clone(),
                    error,
                },
                None,
            ))
        }
    };
    let body = UpstreamBody {
        decoder: Decoder::for_framing(framing),
        connection: Some(connection),
        reusable: false,
        pool: Arc::default(),
    };
    Ok((Response::from_parts(head, ()), Err(body)))
}

#[derive(Debug)]
enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl Decoder {
    /// How a response body of this framing is read off the connection.
    fn for_framing(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty => Decoder::Done,
            Framing::Length(left) => Decoder::Length(left),
            Framing::Chunked => Decoder::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => Decoder::UntilClose,
        }
    }
}

/// A response body read from the instance's socket as the client consumes it.
pub(crate) struct UpstreamBody {
    decoder: Decoder,
    connection: Option<Box<Upstream>>,
    reusable: bool,
    pool: Arc<Pool>,
}

impl UpstreamBody {
    /// At the end of the body: a keep-alive connection with nothing extra in its buffer
    /// goes back to the pool.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let Some(mut connection) = self.connection.take() {
            if self.reusable && connection.read_buf.is_empty() {
                connection.reused = true;
                // An idle connection keeps no big buffer, but remembers how big this
                // instance's answers tend to be (`read_size`) for the next one.
                connection.shed_buffers();
                self.pool.put(connection);
            }
        }
    }
}

enum Step {
    Frame(Frame<Bytes>, bool),
    End,
    Read,
    Fail(io::Error),
}

fn short(left: u64) -> io::Error {
    let missing = if left > 0 {
        format!("{left} bytes ")
    } else {
        String::new()
    };
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the instance closed the connection {missing}before the end of its response"),
    )
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut connection.read_buf;
            let step = match &mut this.decoder {
                Decoder::Done => Step::End,
                Decoder::Length(left) if !buf.is_empty() => {
                    let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    Step::Frame(Frame::data(buf.split_to(take).freeze()), *left == 0)
                }
                Decoder::UntilClose if !buf.is_empty() => {
                    Step::Frame(Frame::data(buf.split().freeze()), false)
                }
                Decoder::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Chunk::Data(data)) => Step::Frame(Frame::data(data), false),
                    Ok(Chunk::Trailers(trailers)) => Step::Frame(Frame::trailers(trailers), false),
                    Ok(Chunk::End) => Step::End,
                    Ok(Chunk::NeedMore) => Step::Read,
                    Err(error) => Step::Fail(io::Error::new(io::ErrorKind::InvalidData, error)),
                },
                _ => Step::Read,
            };
            match step {
                Step::Frame(frame, last) => {
                    if last {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::Fail(error) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Step::Read => {}
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) => {
                    this.connection = None;
                    return match this.decoder {
                        Decoder::UntilClose => {
                            this.decoder = Decoder::Done;
                            Poll::Ready(None)
                        }
                        Decoder::Length(left) => Poll::Ready(Some(Err(short(left)))),
                        _ => Poll::Ready(Some(Err(short(0)))),
                    };
                }
                Ok(_) => {}
                Err(error) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.decoder {
            Decoder::Done => true,
            Decoder::Length(left) => *left == 0,
            Decoder::Chunked(decoder) => decoder.is_done(),
            Decoder::UntilClose => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.decoder {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(left) => SizeHint::with_exact(*left),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is empty; it still frees the connection.
        if matches!(self.decoder, Decoder::Done) || matches!(self.decoder, Decoder::Length(0)) {
            self.finish();
        }
    }
}
