//! The HTTP/1.1 wire format on the instance side, as pure functions over buffers: request
//! heads out, response heads in, and the framing of response bodies (RFC 9112).
//!
//! The instance side is always HTTP/1.1 over loopback to a process tenement started, so the
//! proxy speaks it directly from the request's own task instead of through a client stack
//! with its own connection task: no hand-over between tasks on the hot path.

use std::fmt;

use super::headers;
use bytes::{Bytes, BytesMut};
use http::{
    header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING},
    request, response, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version,
};

/// Largest response head accepted from an instance.
pub(crate) const MAX_HEAD: usize = 64 * 1024 - 1;
const MAX_HEADERS: usize = 128;

#[derive(Debug)]
pub(crate) enum WireError {
    HeadTooLarge,
    Malformed(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::HeadTooLarge => write!(f, "sent a response head over {MAX_HEAD} bytes"),
            WireError::Malformed(what) => write!(f, "sent a malformed response: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

fn malformed(what: impl Into<String>) -> WireError {
    WireError::Malformed(what.into())
}

/// What the instance learns about the client, written as `X-Forwarded-*` headers.
pub(crate) struct Forwarded {
    pub client_ip: HeaderValue,
    pub https: bool,
    pub host: Option<HeaderValue>,
}

/// Appends `METHOD path HTTP/1.1` and the headers the instance gets: the client's minus the
/// hop-by-hop ones and its `X-Forwarded-*` claims, then tenement's `X-Forwarded-*`, and
/// `transfer-encoding: chunked` for a body of unknown length. Filtering while writing
/// spares the header map any changes. Headers named in `Connection` must be gone already.
pub(crate) fn encode_request_head(
    parts: &request::Parts,
    forwarded: &Forwarded,
    upgrade: bool,
    chunked: bool,
    out: &mut BytesMut,
) {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fields = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
    let size = path.len() + parts.headers.len() * 32;
    let line = RequestLine {
        method: parts.method.as_str(),
        target: path,
    };
    encode_head_fields(line, size, fields, forwarded, upgrade, chunked, out);
}

/// A request's first line, as the instance gets it (`target` in origin form).
pub(crate) struct RequestLine<'a> {
    pub method: &'a str,
    pub target: &'a str,
}

/// `encode_request_head` from `(name, value)` pairs (names in any case), `size` bytes of
/// them about: what the proxy writes for a request it parsed itself (`direct.rs`).
pub(crate) fn encode_head_fields<'f>(
    line: RequestLine<'_>,
    size: usize,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
    forwarded: &Forwarded,
    upgrade: bool,
    chunked: bool,
    out: &mut BytesMut,
) {
    out.reserve(128 + size);
    out.extend_from_slice(line.method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(line.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields {
        if headers::is_hop_by_hop(name, upgrade) || headers::is_forwarded(name) {
            continue;
        }
        write_header(out, name, value);
    }
    write_header(out, b"x-forwarded-for", forwarded.client_ip.as_bytes());
    let proto: &[u8] = if forwarded.https { b"https" } else { b"http" };
    write_header(out, b"x-forwarded-proto", proto);
    if let Some(host) = &forwarded.host {
        write_header(out, b"x-forwarded-host", host.as_bytes());
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn write_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head from the front of `buf`, removing it. `None`: not all there yet.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
) -> Result<Option<response::Parts>, WireError> {
    // Uninitialized slots: zeroing 128 of them would cost more than the parse itself.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    );
    let length = match parsing {
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(malformed(error.to_string())),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
        .map_err(|_| malformed(format!("status {:?}", parsed.code)))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Remember where each header sits, then cut the head off the buffer: the values become
    // slices of it, no copies.
    let base = buf.as_ptr() as usize;
    // The head is shorter than MAX_HEAD (64 KiB), so 16-bit offsets do.
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, header) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = header.name.as_ptr() as usize - base;
        let value = header.value.as_ptr() as usize - base;
        let end = |start: usize, len: usize| (start + len) as u16;
        *span = (
            name as u16,
            end(name, header.name.len()),
            value as u16,
            end(value, header.value.len()),
        );
    }
    let head = buf.split_to(length).freeze();
    // One spare slot: hyper adds `connection: close` to responses on closing connections,
    // and a full map would be reallocated for it.
    let mut headers = HeaderMap::with_capacity(count + 1);
    for &(name_start, name_end, value_start, value_end) in &spans[..count] {
        let (name_start, name_end) = (usize::from(name_start), usize::from(name_end));
        let (value_start, value_end) = (usize::from(value_start), usize::from(value_end));
        let name = HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| {
            malformed(format!(
                "header name {:?}",
                String::from_utf8_lossy(&head[name_start..name_end])
            ))
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| malformed(format!("value of header {name}")))?;
        headers.append(name, value);
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(parts))
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

pub(crate) fn response_framing(
    method: &Method,
    parts: &response::Parts,
) -> Result<Framing, WireError> {
    let status = parts.status;
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    // One pass over the headers (a response has a handful) instead of a lookup per name.
    let mut last_encoding = None;
    let mut length = None;
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING {
            last_encoding = Some(value);
        } else if name == CONTENT_LENGTH {
            let parsed = std::str::from_utf8(value.as_bytes())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| malformed(format!("content-length {value:?}")))?;
            if length.is_some_and(|known| known != parsed) {
                return Err(malformed("two different content-lengths"));
            }
            length = Some(parsed);
        }
    }
    if let Some(encoding) = last_encoding {
        // RFC 9112 6.3: both at once may be an attempt at response splitting; an error,
        // and the connection is not used again.
        if length.is_some() {
            return Err(malformed("both transfer-encoding and content-length"));
        }
        let last = encoding
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or_default();
        return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
        None => Framing::UntilClose,
    })
}

/// Whether the connection can carry another request after this response.
pub(crate) fn keeps_alive(parts: &response::Parts, framing: Framing) -> bool {
    parts.version == Version::HTTP_11
        && framing != Framing::UntilClose
        && !parts.headers.iter().any(|(name, value)| {
            name == CONNECTION
                && value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

/// Chunked transfer coding, decoded incrementally from a buffer.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    /// Reading the trailer section; how much of it was searched for its end already.
    Trailers(usize),
    Done,
}

pub(crate) enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    /// Nothing decodable in the buffer: read more.
    NeedMore,
    End,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, ChunkState::Done)
    }

    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Chunk::NeedMore);
                    };
                    let digits = line[..]
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .filter(|d| !d.is_empty() && d.len() <= 15)
                        .and_then(|d| u64::from_str_radix(d, 16).ok())
                        .ok_or_else(|| {
                            malformed(format!("chunk size {:?}", String::from_utf8_lossy(&line)))
                        })?;
                    self.state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::NeedMore);
                    }
                    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkState::DataEnd => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Chunk::NeedMore);
                    };
                    if !line.is_empty() {
                        return Err(malformed("chunk data longer than its size"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(searched) => {
                    let Some(end) = head_end(buf, searched) else {
                        if buf.len() >= MAX_HEAD {
                            return Err(WireError::HeadTooLarge);
                        }
                        self.state = ChunkState::Trailers(buf.len());
                        return Ok(Chunk::NeedMore);
                    };
                    let block = buf.split_to(end);
                    self.state = ChunkState::Done;
                    let trailers = parse_trailers(&block)?;
                    if !trailers.is_empty() {
                        return Ok(Chunk::Trailers(trailers));
                    }
                }
                ChunkState::Done => return Ok(Chunk::End),
            }
        }
    }
}

/// One CRLF-terminated line, without its CRLF.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > 4096 => Err(malformed("chunk line over 4096 bytes")),
        None => Ok(None),
    }
}

/// Where a head or trailer section ends: after its first empty line (which may be the very
/// first line), `\r\n` or a bare `\n`. `searched`: bytes already looked at in an earlier
/// call, so a section that arrives a byte at a time is scanned once, not once per byte.
pub(crate) fn head_end(buf: &[u8], searched: usize) -> Option<usize> {
    let mut line_start = true;
    let from = searched.saturating_sub(2);
    if from > 0 {
        // Whether `from` begins a line: the byte before it ends one.
        line_start = buf[from - 1] == b'\n';
    }
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' if line_start => return Some(i + 1),
            b'\r' if line_start && buf.get(i + 1) == Some(&b'\n') => return Some(i + 2),
            b'\n' => line_start = true,
            _ => line_start = false,
        }
        i += 1;
    }
    None
}

fn parse_trailers(block: &[u8]) -> Result<HeaderMap, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut trailers = HeaderMap::new();
    match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, headers))) => {
            for header in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(header.name.as_bytes()),
                    HeaderValue::from_bytes(header.value),
                ) {
                    trailers.append(name, value);
                }
            }
            Ok(trailers)
        }
        _ => Err(malformed("trailer section")),
    }
}

/// Wraps one piece of request body in chunked coding.
pub(crate) fn chunk_header(len: usize, out: &mut BytesMut) {
    use std::fmt::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk, with trailers if any.
pub(crate) fn last_chunk(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> response::Parts {
        let mut buf = BytesMut::from(text);
        parse_response_head(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn request_heads() {
        let (parts, ()) = http::Request::post("/a?b=1")
            .header("host", "x.example.com")
            .header("cookie", "a=1")
            .header("x-forwarded-for", "6.6.6.6")
            .header("keep-alive", "5")
            .header("upgrade", "websocket")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap()
            .into_parts();
        let forwarded = Forwarded {
            client_ip: HeaderValue::from_static("10.0.0.1"),
            https: true,
            host: Some(HeaderValue::from_static("x.example.com")),
        };
        let mut out = BytesMut::new();
        encode_request_head(&parts, &forwarded, false, true, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: x.example.com\r\ncookie: a=1\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\nx-forwarded-host: x.example.com\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        encode_request_head(&parts, &forwarded, true, false, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("upgrade: websocket\r\n"), "{text}");
        assert!(text.contains("connection: upgrade\r\n"), "{text}");
        assert!(!text.contains("keep-alive"), "{text}");
    }

    #[test]
    fn response_heads_and_framing() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello");
        let parts = parse_response_head(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"hello");
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-a"], "1");
        assert_eq!(
            response_framing(&Method::GET, &parts).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(
            response_framing(&Method::HEAD, &parts).unwrap(),
            Framing::Empty
        );
        assert!(keeps_alive(&parts, Framing::Length(5)));

        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(parse_response_head(&mut partial).unwrap().is_none());

        let chunked = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            response_framing(&Method::GET, &chunked).unwrap(),
            Framing::Chunked
        );
        // Both framings at once: possible response splitting, refused.
        let both = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        );
        assert!(response_framing(&Method::GET, &both).is_err());
        let close = parse("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n\r\n");
        assert_eq!(
            response_framing(&Method::GET, &close).unwrap(),
            Framing::UntilClose
        );
        assert!(!keeps_alive(&close, Framing::Length(1)));
        let old = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!keeps_alive(&old, Framing::Length(1)));
        let empty = parse("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(
            response_framing(&Method::GET, &empty).unwrap(),
            Framing::Empty
        );
        let twice = parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(response_framing(&Method::GET, &twice).is_err());
        let negative = parse("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n");
        assert!(response_framing(&Method::GET, &negative).is_err());

        let mut huge =
            BytesMut::from(format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD)).as_str());
        assert!(matches!(
            parse_response_head(&mut huge),
            Err(WireError::HeadTooLarge)
        ));
        let mut garbage = BytesMut::from("HTTP/1.1 abc\r\n\r\n");
        assert!(parse_response_head(&mut garbage).is_err());
    }

    #[test]
    fn a_head_end_is_found_however_the_bytes_arrive() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody"[..],
            b"HTTP/1.1 200 OK\nA: 1\n\nbody",
            b"HTTP/1.1 200 OK\r\nA: 1\n\r\nbody",
            b"\r\nrest",
        ] {
            let whole = head_end(wire, 0).unwrap();
            assert!(matches!(&wire[whole..], b"body" | b"rest"), "{wire:?}");
            // A byte at a time, each call looking only past what the last one saw.
            let mut searched = 0;
            let found = (1..=wire.len()).find_map(|len| {
                let end = head_end(&wire[..len], searched);
                searched = len;
                end
            });
            assert_eq!(found, Some(whole), "{wire:?}");
        }
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: 1\r\n", 0), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: \r1\r\n", 0), None);
    }

    #[test]
    fn trailers_a_byte_at_a_time() {
        let wire = b"3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut trailers = None;
        loop {
            match decoder.decode(&mut buf).unwrap() {
                Chunk::Data(_) => {}
                Chunk::Trailers(t) => trailers = Some(t),
                Chunk::NeedMore => {
                    buf.extend_from_slice(&wire[fed..=fed]);
                    fed += 1;
                }
                Chunk::End => break,
            }
        }
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-a"], "1");
        assert_eq!(trailers["x-b"], "2");
    }

    #[test]
    fn chunked_bodies_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n";
        for split in 0..wire.len() {
            let mut decoder = ChunkedDecoder::new();
            let mut buf = BytesMut::from(&wire[..split]);
            let mut body = Vec::new();
            let mut trailers = None;
            let mut fed = false;
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Chunk::Data(data) => body.extend_from_slice(&data),
                    Chunk::Trailers(t) => trailers = Some(t),
                    Chunk::NeedMore => {
                        assert!(!fed, "stuck at split {split}");
                        buf.extend_from_slice(&wire[split..]);
                        fed = true;
                    }
                    Chunk::End => break,
                }
            }
            assert_eq!(body, b"hello world", "split {split}");
            assert_eq!(trailers.unwrap()["x-sum"], "11");
            assert!(decoder.is_done());
        }
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from("zz\r\n");
        assert!(decoder.decode(&mut buf).is_err());
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from("0\r\n\r\n");
        assert!(matches!(decoder.decode(&mut buf).unwrap(), Chunk::End));
    }
}
