//! Plain HTTP/1.1 served by the proxy itself for the requests that make up most traffic:
//! `GET` and `HEAD` without a body, for an instance that is running. Such a request is
//! parsed in place, the instance's request head is written straight from the client's
//! bytes, and the answer goes back through one buffer: no header map for the request, no
//! request future handed between hyper's layers. That is what brings the proxy's cost per
//! request down to nginx's (docs/benchmarks.md).
//!
//! hyper stays the server for everything else. The moment a request is anything but the
//! above (it has a body, asks for an upgrade, is HTTP/1.0, has a head too big or
//! malformed, names a host without a route, or needs its instance woken), the connection
//! is handed to hyper together with every byte read and not yet answered, and hyper serves
//! it from that request on. So the rules for everything unusual live in one place. This
//! module writes only two answers of its own: the 502 and 504 for an instance that failed a
//! request already sent to it, with the same words as hyper's side (`forward.rs`).

use std::{
    cell::RefCell,
    future::Future,
    mem::MaybeUninit,
    pin::{pin, Pin},
    sync::Arc,
    task::Poll,
    time::{Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{
    header::{CONTENT_LENGTH, DATE},
    response,
    uri::PathAndQuery,
    HeaderValue, Method, Response, StatusCode, Uri, Version,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::oneshot,
    time::Sleep,
};

use super::{
    backend::ActivityGuard,
    conn::ConnService,
    exchange::{Exchange, InFlight, Logged},
    forward::{bad_gateway, gateway_timeout},
    headers::{self, RequestFacts},
    host,
    http1::{self, Forwarded, RequestLine},
    outbox::Outbox,
    reply::{self, Format},
    table::Entry,
    upstream::{self, Outgoing},
};
use crate::endpoint::Endpoint;

/// How serving a connection here ended.
pub(crate) enum Served {
    /// The connection is over.
    Closed,
    /// hyper takes over: these bytes came from the client and are not answered yet.
    HandOver(Bytes),
}

/// Header fields parsed here at most; a request with more goes to hyper (which applies
/// `max_headers`).
const MAX_FIELDS: usize = 64;
/// Room kept free in the read buffer before each read from the client.
const READ_ROOM: usize = 4096;
/// Body pieces at least this big are written as they were read, not copied.
const SHARE: usize = 4 * 1024;
/// Bytes of answer held back for one write at most.
const HOLD: usize = 256 * 1024;

/// Serves requests on `io` until the connection ends or a request is one for hyper,
/// starting with the bytes in `first` (already read from it). `stop` asks for a graceful
/// end: the request in flight is answered, with `connection: close`.
pub(crate) async fn serve<IO>(
    // `&mut`: a shared reference would not be `Send` (the table reader is a `RefCell`).
    service: &mut ConnService,
    io: &mut IO,
    first: Bytes,
    stop: &mut oneshot::Receiver<()>,
) -> Served
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let context = service.context();
    let max_head = context.max_header_bytes();
    // Usually the whole first request, taken over without a copy.
    let mut buf = BytesMut::from(first);
    // The instance's request head.
    let mut scratch = BytesMut::new();
    let mut outbox = Outbox::default();
    // One timer for the connection's `request_timeout`, moved along with each request: a
    // later deadline only updates the registered one in place (tokio), where a timer per
    // request would be put into the timer wheel and taken out again every time.
    let mut limit_timer = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut stopping = false;
    loop {
        if buf.is_empty() {
            // Read the next request into the buffer's front again (see `Upstream::poll_fill`).
            let _ = buf.try_reclaim(READ_ROOM);
        }
        // A whole request head, or the connection's end.
        let mut searched = 0;
        let head_len = loop {
            let end = http1::head_end(&buf, searched);
            if end.unwrap_or(buf.len()) > max_head {
                // hyper answers 431.
                return Served::HandOver(buf.freeze());
            }
            if let Some(end) = end {
                break end;
            }
            searched = buf.len();
            if buf.capacity() - buf.len() < READ_ROOM / 4 {
                buf.reserve(READ_ROOM);
            }
            let read = if buf.is_empty() {
                // Idle between requests: this is where a graceful stop ends it.
                tokio::select! {
                    biased;
                    _ = &mut *stop => return Served::Closed,
                    read = io.read_buf(&mut buf) => read,
                }
            } else {
                io.read_buf(&mut buf).await
            };
            match read {
                Ok(0) if !buf.is_empty() => return Served::HandOver(buf.freeze()),
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };
        let started = Instant::now();
        let head = buf.split_to(head_len).freeze();
        let Some(Prepared {
            entry,
            endpoint,
            method,
            format,
            closing,
            trailers,
            logged,
        }) = prepare(service, &head, &mut scratch)
        else {
            return Served::HandOver(rejoin(head, buf));
        };
        let in_flight = InFlight::new(service.tracker());
        let activity = ActivityGuard::open(entry.activity.as_ref());
        let upstream_started = logged.is_some().then(Instant::now);
        let mut outgoing = Outgoing::Encoded {
            method: method.clone(),
            head: &scratch,
        };
        // A limit too long to count to (past the clock's range) is no limit.
        let deadline = entry
            .request_timeout
            .and_then(|limit| started.checked_add(limit));
        let limit = deadline.map(|deadline| {
            limit_timer.as_mut().reset(deadline.into());
            limit_timer.as_mut()
        });
        let watched = {
            // Pinned where it is built: the future is big, and moving it costs.
            let sending = pin!(upstream::send_outgoing(
                &entry.pool,
                &endpoint,
                &mut outgoing
            ));
            until_client_leaves(io, &mut buf, max_head, sending, limit).await
        };
        let sent = match watched {
            Watched::Done(sent) => Some(sent),
            Watched::TimedOut => None,
            // The client hung up: nobody is left to answer, and the instance's connection
            // is dropped mid-request (as hyper's side does).
            Watched::ClientLeft => return Served::Closed,
        };
        if let Some(Err((_, true))) = &sent {
            // It never reached the instance, which has moved on (crashed, restarted,
            // stopped): hyper's side waits for it, and sends the request again.
            return Served::HandOver(rejoin(head, buf));
        }
        drop(head);
        if !stopping {
            stopping = !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        }
        let closing = closing || stopping;
        let mut exchange = Exchange::started_at(started, Some(in_flight), logged);
        if let (Some(Ok(_)), Some(started)) = (&sent, upstream_started) {
            exchange.set_upstream_time(started.elapsed());
        }
        if closing {
            if let Some(cork) = context.cork() {
                exchange.set_closing(cork);
            }
        }
        let answering = Answering {
            method: &method,
            closing,
            trailers,
        };
        let answered = match sent {
            Some(Ok(response)) => {
                exchange.set_instance(entry, activity);
                answering.relay(io, &mut outbox, response, exchange).await
            }
            failed => {
                let response = match failed {
                    Some(Err((error, _))) => bad_gateway(&entry, &error, format),
                    _ => gateway_timeout(&entry, format),
                };
                exchange.set_instance(entry, activity);
                let (parts, bytes) = response.into_parts();
                let body = Full::new(bytes);
                answering
                    .write(io, &mut outbox, parts, body, exchange)
                    .await
            }
        };
        if answered.is_err() || closing {
            let _ = io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// A request this module serves, routed, with its head for the instance in `scratch`.
struct Prepared {
    entry: Arc<Entry>,
    endpoint: Endpoint,
    method: Method,
    format: Format,
    /// The client asked for the connection to end after the answer.
    closing: bool,
    /// The client takes trailer fields (`TE: trailers`).
    trailers: bool,
    logged: Option<Box<Logged>>,
}

/// Reads `head` and decides whether it is a request for this module: `None` hands it to
/// hyper. Allocates nothing, except the access log's record when there is a log.
fn prepare(service: &ConnService, head: &Bytes, scratch: &mut BytesMut) -> Option<Prepared> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let parsing = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        head,
        &mut slots,
    );
    if !matches!(parsing, Ok(httparse::Status::Complete(length)) if length == head.len()) {
        return None;
    }
    if parsed.version != Some(1) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let target = parsed.path?;
    if !target.starts_with('/') {
        return None;
    }
    // Read as hyper's side reads it (a fragment, for one, is no part of it).
    let target = PathAndQuery::from_maybe_shared(head.slice_ref(target.as_bytes())).ok()?;
    let fields = || parsed.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let facts = RequestFacts::<[u8]>::of_fields(fields());
    if facts.framed || facts.expect || facts.upgrade || facts.names_headers || facts.many_hosts {
        return None;
    }
    let host_value = HeaderValue::from_maybe_shared(head.slice_ref(facts.host?)).ok()?;
    let host = host_value.to_str().ok().filter(|host| !host.is_empty())?;
    let host = host::normalize(host);
    let entry = service
        .table()
        .with(|table| table.resolve(&host, target.path()).cloned())
        .ok()?;
    if !entry.state.is_serving() {
        return None;
    }
    let endpoint = entry.endpoint.clone()?;
    let context = service.context();
    let forwarded = Forwarded {
        client_ip: context.peer_ip().clone(),
        https: context.is_https(),
        host: Some(host_value),
    };
    scratch.clear();
    let line = RequestLine {
        method: method.as_str(),
        target: target.as_str(),
    };
    http1::encode_head_fields(
        line,
        head.len(),
        fields(),
        &forwarded,
        false,
        false,
        scratch,
    );
    let logged = context.access_log().map(|_| {
        let user_agent = fields()
            .find(|(name, _)| name.eq_ignore_ascii_case(b"user-agent"))
            .and_then(|(_, value)| HeaderValue::from_maybe_shared(head.slice_ref(value)).ok());
        Box::new(Logged {
            conn: context.clone(),
            method: method.clone(),
            uri: Uri::from(target),
            version: Version::HTTP_11,
            host: forwarded.host,
            user_agent,
        })
    });
    Some(Prepared {
        entry,
        endpoint,
        method,
        format: if facts.wants_json {
            Format::Json
        } else {
            Format::Text
        },
        closing: facts.close,
        trailers: facts.trailers,
        logged,
    })
}

/// The bytes of a request head put back in front of what followed it.
fn rejoin(head: Bytes, rest: BytesMut) -> Bytes {
    if rest.is_empty() {
        return head;
    }
    let mut joined = BytesMut::with_capacity(head.len() + rest.len());
    joined.extend_from_slice(&head);
    joined.extend_from_slice(&rest);
    joined.freeze()
}

/// How waiting for the instance ended.
enum Watched<T> {
    Done(T),
    /// `request_timeout` passed first.
    TimedOut,
    /// The client closed its end first.
    ClientLeft,
}

/// Runs `work` until it is done, `limit` fires, or the client leaves. Whatever the client
/// sends meanwhile (a pipelined request) is kept in `buf`, up to `max` bytes.
async fn until_client_leaves<IO, F>(
    io: &mut IO,
    buf: &mut BytesMut,
    max: usize,
    mut work: Pin<&mut F>,
    mut limit: Option<Pin<&mut Sleep>>,
) -> Watched<F::Output>
where
    IO: AsyncRead + Unpin,
    F: Future,
{
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = work.as_mut().poll(cx) {
            return Poll::Ready(Watched::Done(done));
        }
        if let Some(Poll::Ready(())) = limit.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            return Poll::Ready(Watched::TimedOut);
        }
        // Read onto the stack: most of the time there is nothing (and no system call, the
        // socket being known quiet), and the request's own buffer is left alone.
        while buf.len() <= max {
            let mut storage = [MaybeUninit::<u8>::uninit(); 1024];
            let mut read = ReadBuf::uninit(&mut storage);
            match Pin::new(&mut *io).poll_read(cx, &mut read) {
                Poll::Pending => break,
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    return Poll::Ready(Watched::ClientLeft)
                }
                Poll::Ready(Ok(())) => buf.extend_from_slice(read.filled()),
                Poll::Ready(Err(_)) => return Poll::Ready(Watched::ClientLeft),
            }
        }
        Poll::Pending
    })
    .await
}

/// How an answer goes back to the client.
struct Answering<'a> {
    method: &'a Method,
    closing: bool,
    trailers: bool,
}

impl Answering<'_> {
    /// The instance's answer, with its hop-by-hop headers left behind. Refuses a `101` to
    /// a request that asked for no upgrade.
    async fn relay<IO>(
        &self,
        io: &mut IO,
        out: &mut Outbox,
        response: Response<upstream::UpstreamBody>,
        exchange: Exchange,
    ) -> std::io::Result<()>
    where
        IO: AsyncWrite + Unpin,
    {
        let (mut parts, body) = response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let message = "switched protocols unasked (101 to a request without Upgrade)";
            let refusal = reply::error(StatusCode::BAD_GATEWAY, message, Format::Text);
            let (parts, bytes) = refusal.into_parts();
            return self.write(io, out, parts, Full::new(bytes), exchange).await;
        }
        // The usual hop-by-hop headers are skipped as the head is written (no changes to the
        // map); only headers that `Connection` names need removing first.
        headers::remove_connection_named(&mut parts.headers);
        self.write(io, out, parts, body, exchange).await
    }

    /// Writes `parts` and streams `body`: what is at hand goes out in one write, and the
    /// last write of a closing connection is corked to leave with the FIN (`cork.rs`).
    async fn write<IO, B>(
        &self,
        io: &mut IO,
        out: &mut Outbox,
        parts: response::Parts,
        mut body: B,
        mut exchange: Exchange,
    ) -> std::io::Result<()>
    where
        IO: AsyncWrite + Unpin,
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        exchange.set_status(parts.status.as_u16());
        let bodiless = *self.method == Method::HEAD
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let length = body.size_hint().exact();
        let chunked = !bodiless && length.is_none();
        self.encode_head(&parts, length.filter(|_| !bodiless), chunked, out.tail());
        let mut ended = false;
        loop {
            // Wait only with nothing else left to write.
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    out.flush(io).await?;
                    body.frame().await
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    // The instance broke off: the client gets what came, then the end of
                    // the connection, never a body that looks whole.
                    tracing::debug!("upstream body failed: {error}");
                    out.flush(io).await?;
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if chunked {
                        let trailers = frame.trailers_ref().filter(|_| self.trailers);
                        http1::last_chunk(trailers, out.tail());
                        ended = true;
                    }
                    continue;
                }
            };
            if data.is_empty() || bodiless {
                continue;
            }
            exchange.add_bytes(data.len());
            if chunked {
                http1::chunk_header(data.len(), out.tail());
            }
            if data.len() >= SHARE {
                out.share(data);
            } else {
                out.tail().extend_from_slice(&data);
            }
            if chunked {
                out.tail().extend_from_slice(b"\r\n");
            }
            if out.held() >= HOLD {
                out.flush(io).await?;
            }
        }
        if chunked && !ended {
            http1::last_chunk(None, out.tail());
        }
        exchange.set_complete();
        exchange.answer_in_hand();
        out.flush(io).await?;
        io.flush().await?;
        // Logged and counted now that it is out.
        drop(exchange);
        Ok(())
    }

    /// The status line and headers, plus what hyper adds to an answer: its framing, `date`
    /// when the instance sent none, and `connection: close` on a connection that ends.
    fn encode_head(
        &self,
        parts: &response::Parts,
        length: Option<u64>,
        chunked: bool,
        out: &mut BytesMut,
    ) {
        out.reserve(256 + parts.headers.len() * 48);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut dated = false;
        let mut measured = false;
        for (name, value) in &parts.headers {
            let name_bytes = name.as_str().as_bytes();
            if headers::is_hop_by_hop(name_bytes, false) {
                continue;
            }
            dated |= name == DATE;
            measured |= name == CONTENT_LENGTH;
            http1::write_header(out, name_bytes, value.as_bytes());
        }
        if let (false, Some(length)) = (measured, length) {
            use std::fmt::Write;
            let _ = write!(out, "content-length: {length}\r\n");
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if !dated {
            write_date(out);
        }
        if self.closing {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

thread_local! {
    /// Each worker's `date` for the current second, and which second that is.
    static DATE_NOW: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// A `date` header for now, rendered once a second per worker.
fn write_date(out: &mut BytesMut) {
    DATE_NOW.with_borrow_mut(|(second, text)| {
        let now = SystemTime::now();
        let this_second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if *second != this_second {
            text.copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
            *second = this_second;
        }
        http1::write_header(out, b"date", &text[..]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_goes_back_in_front_of_what_followed_it() {
        let head = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(rejoin(head.clone(), BytesMut::new()), head);
        let joined = rejoin(head, BytesMut::from("POST"));
        assert_eq!(&joined[..], b"GET / HTTP/1.1\r\n\r\nPOST");
    }

    #[test]
    fn date_is_an_http_date() {
        let mut out = BytesMut::new();
        write_date(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        let value = text
            .strip_prefix("date: ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        let date = httpdate::parse_http_date(value).unwrap();
        let off = SystemTime::now().duration_since(date).unwrap();
        assert!(off.as_secs() < 5, "{text}");
    }
}
