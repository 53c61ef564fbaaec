//! Our HTTP/1.1 server loop on `may` coroutines, shared by `rinha api` and `rinha processor`.
//!
//! Owns the wire: reading requests (parsed by `httparse`), bounding what a client may send,
//! writing responses, keep-alive and pipelining. A [`Handler`] sees only complete, valid
//! requests and fills a [`Response`]. We need our own loop because the balancer hands the
//! API processes already-accepted sockets, which `may_minihttp` cannot take.
//!
//! Contract, per connection (one coroutine each):
//! - Requests are answered in order; pipelined requests are answered in one write.
//! - Bodies need `Content-Length` (at most [`Limits::max_body`], else 413 and close). A
//!   `Transfer-Encoding` request body gets 501 and the connection is closed; a malformed or
//!   duplicated `Content-Length` gets 400 and close; a malformed request line or header 400
//!   and close; a head over [`Limits::max_head`] bytes or with too many headers 431 and close.
//!   A request with neither `Content-Length` nor `Transfer-Encoding` has an empty body (RFC
//!   9112); [`Request::content_length`] tells the handler, which may refuse it (the API
//!   answers 411 to such a `POST /payments`).
//! - HTTP/1.0 closes after the answer unless it asked for keep-alive; `Connection: close` is
//!   honoured. A request (head and body) must arrive within [`Limits::head_timeout`] of its
//!   first byte, an answer must be taken by the client within the same time (a client that
//!   never reads is disconnected), and an idle connection is closed after
//!   [`Limits::idle_timeout`]. At most
//!   [`Limits::max_connections`] are open in a process: at the bound a new connection closes
//!   the longest-idle one ([`conns`]), so idle clients (about 12 KiB each, mostly coroutine
//!   stack pages) are bounded in number and time and never lock a new client out. When none
//!   is idle, the new connection gets a 503 (`Connection: close`, `Retry-After: 1`) if its
//!   socket takes it at once, and is closed.
//! - A panic inside a handler ends that connection only.
//! - The loop allocates nothing per request once a connection's buffers have grown to fit its
//!   requests; what a handler allocates is its own (the API's routes allocate nothing, the
//!   simulator's do).
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use may::net::{TcpListener, TcpStream};

/// Bounds on what one client may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (request line + headers) in bytes.
    pub max_head: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Time allowed from a request's first byte to its last (head and body), and for one
    /// write of answers to be taken by the client.
    pub head_timeout: Duration,
    /// Time a connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Connections open at once in this process; at the bound a new one evicts the
    /// longest-idle one, or gets a 503 and is closed when none is idle (see [`conns`]). The
    /// first value a process serves with sizes its table.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8192,
            max_body: 4096,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 2048,
        }
    }
}

/// A complete request, borrowed from the connection's buffer.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    /// The raw query string after `?` (empty if none).
    pub query: &'a str,
    /// Header lines (for handlers that need one, e.g. a token).
    pub headers: &'a [httparse::Header<'a>],
    /// The body (`Content-Length` bytes).
    pub body: &'a [u8],
    /// The request's `Content-Length`; `None` when it had none (then `body` is empty).
    pub content_length: Option<usize>,
}

impl Request<'_> {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What to do with the connection after a response (test-only misbehaviour included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Keep the connection for the next request.
    KeepAlive,
    /// Send the response, then close.
    Close,
    /// Close at once without sending anything (a reset, from the client's view).
    Abort,
    /// Send only the first `n` bytes of the response, then close.
    Truncate(usize),
    /// Never answer; keep the connection open until the client gives up.
    Hang,
}

/// A response being built by a handler. Reused across requests of a connection.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: [&'static str; 4],
    n_headers: usize,
    body: Vec<u8>,
    after: After,
}

impl Default for Response {
    fn default() -> Self {
        Self::new()
    }
}

impl Response {
    /// An empty 200.
    pub fn new() -> Self {
        Response {
            status: 200,
            headers: [""; 4],
            n_headers: 0,
            body: Vec::new(),
            after: After::KeepAlive,
        }
    }

    fn reset(&mut self) {
        self.status = 200;
        self.n_headers = 0;
        self.body.clear();
        self.after = After::KeepAlive;
    }

    /// Sets the status code.
    pub fn status(&mut self, code: u16) -> &mut Self {
        self.status = code;
        self
    }

    /// Adds a header line such as `"Retry-After: 5"` (at most four).
    pub fn header(&mut self, line: &'static str) -> &mut Self {
        if self.n_headers < self.headers.len() {
            self.headers[self.n_headers] = line;
            self.n_headers += 1;
        }
        self
    }

    /// Sets a static JSON body.
    pub fn json(&mut self, body: &str) -> &mut Self {
        self.body.clear();
        self.body.extend_from_slice(body.as_bytes());
        self
    }

    /// The body buffer, to write into (cleared for each request).
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    /// Sets what happens to the connection after this response.
    pub fn after(&mut self, after: After) -> &mut Self {
        self.after = after;
        self
    }

    /// The status set so far.
    pub fn code(&self) -> u16 {
        self.status
    }

    /// `keep_alive_header`: say `Connection: keep-alive` (an HTTP/1.0 client that asked for it
    /// assumes a close otherwise).
    fn write_to(&self, out: &mut Vec<u8>, close: bool, keep_alive_header: bool) {
        out.extend_from_slice(b"HTTP/1.1 ");
        let _ = write!(out, "{} {}\r\n", self.status, reason(self.status));
        if !(self.status == 204 || self.status == 304) {
            out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            let _ = write!(out, "{}\r\n", self.body.len());
        }
        for h in &self.headers[..self.n_headers] {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if keep_alive_header {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !(self.status == 204 || self.status == 304) {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The reason phrase of the status codes we use.
pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Application logic: turns a request into a response. One clone per connection.
///
/// Handlers run on `may` coroutines, which can move between worker threads at any blocking
/// point: a handler must not keep thread-local state across a blocking call (the spawn's
/// SAFETY argument in [`spawn`] relies on it). The API's and the simulator's handlers use
/// none (the allocator and `std`'s own thread-locals do not span a yield).
pub trait Handler: Clone + Send + 'static {
    /// Fills `rsp` for `req`. May block the coroutine (e.g. `may::coroutine::sleep`).
    fn handle(&mut self, req: &Request<'_>, rsp: &mut Response);

    /// Called once the answers to what [`Handler::handle`] just saw have been written (or
    /// could not be: the connection is ending), before the loop waits for more: work that
    /// must follow a request but need not delay its answer goes here. Not called if a
    /// handler panicked.
    fn after_write(&mut self) {}
}

const STACK_SIZE: usize = 64 * 1024;
static CONNS: OnceLock<conns::Conns> = OnceLock::new();

/// This process's connection table, sized by the first `max_connections` served with.
pub fn connections(max_connections: usize) -> &'static conns::Conns {
    CONNS.get_or_init(|| conns::Conns::new(max_connections))
}

/// Configures the coroutine runtime: call once, before any coroutine, from `main`'s thread.
pub fn init_runtime(workers: usize) {
    may::config()
        .set_workers(workers.max(1))
        .set_stack_size(STACK_SIZE);
    may::config().set_worker_pin(false);
    raise_fd_limit();
}

/// Raises the soft limit on open files to the hard limit (10,000 idle clients need it).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard);
    }
}

/// Runs `f` on a new coroutine.
pub fn spawn<F: FnOnce() + Send + 'static>(f: F) -> std::io::Result<()> {
    // SAFETY: may marks spawning unsafe because a coroutine can migrate between worker
    // threads at any blocking point, so thread-local storage read before and after a yield
    // may differ. Our coroutines (connection loops and acceptors) keep all their state on
    // their own stack or in Send + Sync values they own; they use no thread-locals, and the
    // handlers they call must not either (the contract stated on `Handler`).
    unsafe {
        may::coroutine::Builder::new()
            .stack_size(STACK_SIZE)
            .spawn(f)
    }
    .map(|_| ())
}

/// Accepts connections on `listener` forever, one coroutine each.
pub fn serve_listener<H: Handler>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
) -> std::io::Result<()> {
    spawn(move || loop {
        match listener.accept() {
            Ok((stream, _)) => serve_stream(stream, handler.clone(), limits),
            Err(_) => may::coroutine::sleep(Duration::from_millis(5)), // EMFILE and the like
        }
    })
}

/// Serves a socket accepted elsewhere (handed over by the balancer).
pub fn serve_fd<H: Handler>(fd: OwnedFd, handler: H, limits: Limits) {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` comes from an OwnedFd we consumed: it is an open socket that nothing
    // else owns or will close; the TcpStream takes over its ownership.
    let stream = std::panic::catch_unwind(|| unsafe { TcpStream::from_raw_fd(raw) });
    if let Ok(stream) = stream {
        serve_stream(stream, handler, limits);
    }
}

/// Serves one accepted stream on its own coroutine.
pub fn serve_stream<H: Handler>(stream: TcpStream, handler: H, limits: Limits) {
    let Some(mut ticket) = connections(limits.max_connections).admit(stream.as_raw_fd()) else {
        refuse(stream.as_raw_fd());
        return; // dropping the stream closes it
    };
    let _ = spawn(move || {
        let _ = stream.set_nodelay(true);
        // A client that sends but never reads would hold this coroutine in a write (and its
        // connection slot busy, so never evicted) for good: an answer that cannot be written
        // within the head timeout ends the connection.
        let _ = stream.set_write_timeout(Some(limits.head_timeout));
        let mut stream = stream;
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            connection(&mut stream, handler, limits, &mut ticket)
        }));
        let _ = stream.shutdown(std::net::Shutdown::Both);
        // The slot is freed (waiting out an eviction in progress) before the fd is closed, so
        // an evictor never shuts down an fd number that was closed and reused: see conns.rs.
        drop(ticket);
        drop(stream);
    });
}

/// The answer to a connection refused by a full table, built once.
fn refusal() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut rsp = Response::new();
        rsp.status(503)
            .header("Retry-After: 1")
            .json(r#"{"error":"too many connections, retry later"}"#);
        let mut out = Vec::new();
        rsp.write_to(&mut out, true, false);
        out
    })
}

/// Tells a connection refused by a full table why, without ever waiting on it: one
/// non-blocking send (a new socket's buffer takes it), then a non-blocking read of what the
/// client already sent, so that the close is less likely to become a reset that discards the
/// answer at the client.
fn refuse(fd: std::os::fd::RawFd) {
    use nix::sys::socket::{recv, send, shutdown, MsgFlags, Shutdown};
    let _ = send(
        fd,
        refusal(),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
    let _ = shutdown(fd, Shutdown::Write);
    let mut sink = [0u8; 1024];
    for _ in 0..4 {
        if !matches!(recv(fd, &mut sink, MsgFlags::MSG_DONTWAIT), Ok(n) if n > 0) {
            break;
        }
    }
}

enum Parsed {
    /// A request of `head + body` bytes: its handler has filled `rsp`.
    Done {
        used: usize,
        close: bool,
        /// An HTTP/1.0 request that asked for keep-alive.
        v10: bool,
    },
    Partial,
    Reject(u16, &'static str),
}

fn parse_and_handle<H: Handler>(
    buf: &[u8],
    handler: &mut H,
    rsp: &mut Response,
    limits: &Limits,
) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head {
                Parsed::Reject(431, r#"{"error":"request head too large"}"#)
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Reject(431, r#"{"error":"too many headers"}"#)
        }
        Err(_) => return Parsed::Reject(400, r#"{"error":"malformed HTTP request"}"#),
    };
    if head > limits.max_head {
        return Parsed::Reject(431, r#"{"error":"request head too large"}"#);
    }
    let mut length: Option<usize> = None;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).ok().map(str::trim);
            let n = v
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok());
            match (n, length) {
                (None, _) => return Parsed::Reject(400, r#"{"error":"invalid Content-Length"}"#),
                (Some(_), Some(_)) => {
                    return Parsed::Reject(400, r#"{"error":"duplicate Content-Length"}"#)
                }
                (Some(n), None) => length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Reject(
                501,
                r#"{"error":"Transfer-Encoding request bodies are not supported; send Content-Length"}"#,
            );
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    let method = req.method.unwrap_or("");
    let content_length = length;
    let length = length.unwrap_or(0);
    if length > limits.max_body {
        return Parsed::Reject(413, r#"{"error":"request body too large"}"#);
    }
    if buf.len() < head + length {
        return Parsed::Partial;
    }
    let full = req.path.unwrap_or("/");
    let (path, query) = full.split_once('?').unwrap_or((full, ""));
    let request = Request {
        method,
        path,
        query,
        headers: req.headers,
        body: &buf[head..head + length],
        content_length,
    };
    rsp.reset();
    handler.handle(&request, rsp);
    Parsed::Done {
        used: head + length,
        close,
        v10: req.version == Some(0),
    }
}

fn connection<H: Handler>(
    stream: &mut TcpStream,
    mut handler: H,
    limits: Limits,
    ticket: &mut conns::Ticket<'static>,
) {
    let mut inbuf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut rsp = Response::new();
    let mut chunk = [0u8; 2048];
    let mut head_started: Option<Instant> = None;
    loop {
        // Answer every complete request in the buffer (pipelining), then write once.
        let mut start = 0;
        let mut finish: Option<After> = None;
        while start < inbuf.len() {
            match parse_and_handle(&inbuf[start..], &mut handler, &mut rsp, &limits) {
                Parsed::Done { used, close, v10 } => {
                    start += used;
                    head_started = None;
                    match rsp.after {
                        After::KeepAlive | After::Close => {
                            let close = close || rsp.after == After::Close;
                            rsp.write_to(&mut out, close, v10);
                            if close {
                                finish = Some(After::Close);
                                break;
                            }
                        }
                        other => {
                            finish = Some(other);
                            if let After::Truncate(_) = other {
                                rsp.write_to(&mut out, true, false);
                            }
                            break;
                        }
                    }
                }
                Parsed::Partial => break,
                Parsed::Reject(code, body) => {
                    rsp.reset();
                    rsp.status(code).json(body);
                    rsp.write_to(&mut out, true, false);
                    finish = Some(After::Close);
                    break;
                }
            }
        }
        inbuf.drain(..start);
        if let Some(finish) = finish {
            // The connection ends here: send what it may still send, let the handler follow
            // up once, then close (or, for `Hang`, hold it until the client gives up).
            match finish {
                After::Abort => {}
                After::Truncate(n) => {
                    let _ = stream.write_all(&out[..n.min(out.len())]);
                }
                _ => {
                    let _ = stream.write_all(&out);
                }
            }
            handler.after_write();
            if finish == After::Hang {
                let _ = stream.set_read_timeout(Some(limits.idle_timeout));
                while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
            }
            return;
        }
        if !out.is_empty() {
            let written = stream.write_all(&out);
            handler.after_write();
            if written.is_err() {
                return;
            }
            out.clear();
        }
        // Read more, within the time this state allows.
        let timeout = if inbuf.is_empty() {
            limits.idle_timeout
        } else {
            let started = *head_started.get_or_insert_with(Instant::now);
            match limits.head_timeout.checked_sub(started.elapsed()) {
                Some(t) if !t.is_zero() => t,
                _ => return,
            }
        };
        if stream.set_read_timeout(Some(timeout)).is_err() {
            return;
        }
        if inbuf.is_empty() && !ticket.idle() {
            return; // evicted to make room for a new connection
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !ticket.busy() {
                    return; // evicted while idle: close without answering
                }
                if inbuf.is_empty() {
                    head_started = Some(Instant::now());
                }
                inbuf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Binds a coroutine TCP listener (port 0 picks a free port). A port another process
/// listens on is an error ("Address already in use").
///
/// `may` binds with `SO_REUSEPORT`, so on its own it would share a port with any other
/// listener that set it too (a stale simulator, say) and the kernel would split the
/// connections between the two without a word. A plain bind first, without that option,
/// fails on a port somebody listens on; it is closed before `may` binds (it never listened,
/// so it leaves nothing behind).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    TcpListener::bind(addr)
}

/// The value of parameter `name` in a raw query string, percent-decoded (`None` if absent).
/// Allocates; [`query_param_in`] does not.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = raw_param(query, name)?;
    let bytes: Vec<u8> = PercentDecoded::new(raw).collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of parameter `name` in a raw query string, percent-decoded into `buf`: `None` if
/// absent, `Some(None)` if the decoded value is longer than `buf` or not UTF-8.
pub fn query_param_in<'b>(query: &str, name: &str, buf: &'b mut [u8]) -> Option<Option<&'b str>> {
    let raw = raw_param(query, name)?;
    let mut n = 0;
    for b in PercentDecoded::new(raw) {
        let Some(slot) = buf.get_mut(n) else {
            return Some(None);
        };
        *slot = b;
        n += 1;
    }
    Some(std::str::from_utf8(&buf[..n]).ok())
}

/// The raw (still encoded) value of the first parameter `name`.
fn raw_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The bytes of a query value: `%XX` (two hex digits) is that byte, `+` a space; any other
/// `%` stays as it is.
struct PercentDecoded<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> PercentDecoded<'a> {
    fn new(s: &'a str) -> Self {
        PercentDecoded {
            b: s.as_bytes(),
            i: 0,
        }
    }
}

impl Iterator for PercentDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = self.b;
        let c = *b.get(self.i)?;
        let hex = |at: usize| b.get(at).and_then(|&c| (c as char).to_digit(16));
        let out = match (c, hex(self.i + 1), hex(self.i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                self.i += 2;
                (hi * 16 + lo) as u8
            }
            (b'+', _, _) => b' ',
            (c, _, _) => c,
        };
        self.i += 1;
        Some(out)
    }
}

pub mod conns;
#[doc(hidden)]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_and_decoded() {
        let q = "from=2025-07-10T12%3A34%3A56.000Z&to=2025-07-10T12:35:00.000Z&flag";
        assert_eq!(
            query_param(q, "from").as_deref(),
            Some("2025-07-10T12:34:56.000Z")
        );
        assert_eq!(
            query_param(q, "to").as_deref(),
            Some("2025-07-10T12:35:00.000Z")
        );
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        // Both characters after `%` must be hex digits (from_str_radix took "+5" as 5).
        assert_eq!(query_param("a=%+5&b=%-5", "a").as_deref(), Some("% 5"));
        assert_eq!(query_param("a=%+5&b=%-5", "b").as_deref(), Some("%-5"));
        assert_eq!(query_param("a=%41%4a%4F", "a").as_deref(), Some("AJO"));
        // The same decoding into a caller's buffer, without allocating.
        let mut buf = [0u8; 24];
        assert_eq!(
            query_param_in(q, "from", &mut buf),
            Some(Some("2025-07-10T12:34:56.000Z"))
        );
        assert_eq!(query_param_in("a=%+5", "a", &mut buf), Some(Some("% 5")));
        assert_eq!(query_param_in(q, "missing", &mut buf), None);
        assert_eq!(query_param_in("a=%ff", "a", &mut buf), Some(None));
        assert_eq!(query_param_in(q, "from", &mut [0u8; 23]), Some(None));
    }

    /// Logs what the loop calls, in order.
    #[derive(Clone)]
    struct Logged(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);
    impl Handler for Logged {
        fn handle(&mut self, _req: &Request<'_>, rsp: &mut Response) {
            self.0.lock().expect("log").push("handle");
            rsp.status(202);
        }
        fn after_write(&mut self) {
            self.0.lock().expect("log").push("after");
        }
    }

    /// `after_write` follows every batch of answers: once for two pipelined requests, and on
    /// the closing path (`Connection: close`) too, where the API's wake-up must not be lost.
    #[test]
    fn after_write_follows_each_written_batch_and_the_closing_answer() {
        use std::io::{Read, Write};
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        serve_listener(listener, Logged(log.clone()), Limits::default()).expect("serve");
        // Waits (10 s at most) until `n` requests were handled and the last call is `after`.
        let wait_for = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen = log.lock().expect("log").clone();
                let handled = seen.iter().filter(|e| **e == "handle").count();
                if (handled >= n && seen.last() == Some(&"after")) || Instant::now() > deadline {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.windows(12).filter(|w| w == b"202 Accepted").count() < 2 {
            let n = c.read(&mut buf).expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        // One read normally holds both (one batch, one call); two reads give two calls.
        let first = wait_for(2);
        assert!(
            first == ["handle", "handle", "after"]
                || first == ["handle", "after", "handle", "after"],
            "{first:?}"
        );
        c.write_all(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("read to the end");
        assert!(rest.starts_with(b"HTTP/1.1 202"));
        let all = wait_for(3);
        assert_eq!(all.len(), first.len() + 2, "{all:?}");
        assert_eq!(all[first.len()..], ["handle", "after"]);
    }

    #[derive(Clone)]
    struct Accept;
    impl Handler for Accept {
        fn handle(&mut self, _req: &Request<'_>, rsp: &mut Response) {
            rsp.status(202);
        }
    }

    /// A client that pipelines requests and never reads its answers is disconnected once an
    /// answer cannot be written within the head timeout (before, the server sat in the write
    /// for good and answered everything once the client read again).
    #[test]
    fn a_client_that_never_reads_is_disconnected() {
        use nix::sys::socket::{connect, setsockopt, socket, sockopt, AddressFamily, SockFlag};
        use nix::sys::socket::{SockType, SockaddrIn};
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("addr") else {
            panic!("not v4");
        };
        let limits = Limits {
            head_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        serve_listener(listener, Accept, limits).expect("serve");
        // A small receive buffer, so that the server's writes block after a few answers.
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        setsockopt(&fd, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
        connect(fd.as_raw_fd(), &SockaddrIn::from(addr)).expect("connect");
        let mut c = std::net::TcpStream::from(fd);
        const SENT: usize = 100_000;
        let mut w = c.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < SENT && w.write_all(b"GET /a HTTP/1.1\r\n\r\n").is_ok() {
                sent += 1;
            }
            sent
        });
        std::thread::sleep(Duration::from_secs(2));
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut answers = 0;
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let end = loop {
            match c.read(&mut buf) {
                Ok(0) => break "closed",
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
                Err(e) => {
                    break if e.kind() == std::io::ErrorKind::WouldBlock {
                        "open"
                    } else {
                        "error"
                    }
                }
            }
            answers += got.windows(3).filter(|w| w == b"202").count();
            got.drain(..got.len().saturating_sub(2));
        };
        let _ = c.shutdown(std::net::Shutdown::Both);
        let sent = writer.join().expect("writer");
        assert!(
            end == "closed" || end == "reset",
            "the connection stayed {end}"
        );
        assert!(
            answers < sent,
            "all {sent} answered: the server never gave up"
        );
    }

    use super::fuzz::{drive, Req};

    use proptest::prelude::*;

    fn request_strategy() -> impl Strategy<Value = Req> {
        (
            prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
            "/[a-z-]{0,12}(\\?[a-z]=[0-9]{1,3})?",
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(m, p, b)| (m.to_string(), p, b))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let (_, code) = drive(&bytes, &cuts);
            if let Some(c) = code {
                prop_assert!((400..600).contains(&c), "{c}");
            }
        }

        #[test]
        fn mutated_requests_never_panic(
            (m, p, b) in request_strategy(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = format!("{m} {p} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", b.len()).into_bytes();
            bytes.extend_from_slice(&b);
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            let _ = drive(&bytes, &[]);
        }

        #[test]
        fn pipelined_requests_parse_the_same_however_split(
            reqs in proptest::collection::vec(request_strategy(), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut bytes = Vec::new();
            for (m, p, b) in &reqs {
                bytes.extend_from_slice(
                    format!("{m} {p} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes(),
                );
                bytes.extend_from_slice(b);
            }
            let (seen, code) = drive(&bytes, &cuts);
            prop_assert_eq!(code, None);
            let want: Vec<_> = reqs
                .iter()
                .map(|(m, p, b)| {
                    let (path, q) = p.split_once('?').unwrap_or((p, ""));
                    (m.clone(), format!("{path}?{q}"), b.clone())
                })
                .collect();
            prop_assert_eq!(seen, want);
        }
    }
}

#[cfg(test)]
mod parser_tests {
    use super::*;

    #[derive(Clone)]
    struct Echo;
    impl Handler for Echo {
        fn handle(&mut self, req: &Request<'_>, rsp: &mut Response) {
            rsp.status(200).body_mut().extend_from_slice(req.body);
        }
    }

    fn parse(buf: &[u8]) -> Parsed {
        parse_and_handle(buf, &mut Echo, &mut Response::new(), &Limits::default())
    }

    #[test]
    fn framing_rules() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Done {
                used: 18,
                close: false,
                ..
            }
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.0\r\n\r\n"),
            Parsed::Done { close: true, .. }
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
            Parsed::Done { close: false, .. }
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"),
            Parsed::Done { close: true, .. }
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"),
            Parsed::Partial
        ));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Partial));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"),
            Parsed::Reject(400, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Parsed::Reject(400, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Parsed::Reject(400, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"),
            Parsed::Reject(413, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Reject(501, _)
        ));
        assert!(matches!(
            parse(b"\x00\x01 nonsense\r\n\r\n"),
            Parsed::Reject(400, _)
        ));
        // A request without a length has an empty body; the handler is told it had none.
        #[derive(Clone)]
        struct Length;
        impl Handler for Length {
            fn handle(&mut self, req: &Request<'_>, rsp: &mut Response) {
                let _ = write!(rsp.body_mut(), "{:?}", req.content_length);
            }
        }
        let seen = |req: &[u8]| {
            let mut rsp = Response::new();
            let done = parse_and_handle(req, &mut Length, &mut rsp, &Limits::default());
            assert!(matches!(done, Parsed::Done { .. }), "not handled");
            String::from_utf8_lossy(&rsp.body).into_owned()
        };
        assert_eq!(seen(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"), "None");
        assert_eq!(
            seen(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"),
            "Some(2)"
        );
        assert!(matches!(
            parse_and_handle(
                b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                &mut Echo,
                &mut Response::new(),
                &Limits::default()
            ),
            Parsed::Done { .. }
        ));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        assert!(matches!(parse(&long), Parsed::Reject(431, _)));
    }
}
