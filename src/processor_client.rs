//! A keep-alive HTTP/1.1 client towards one payment processor (tokio + `httparse`).
//!
//! Owns the connections to one processor and the classification of every answer into an
//! [`Outcome`] that says what is known about the payment afterwards. Contract:
//! - The address is resolved when the client is made and again after a connection failure.
//! - Connections are reused; a connection is returned to the pool only after its whole
//!   response body was read (Content-Length or chunked).
//! - [`Outcome::NotSent`] and [`Outcome::Failed`]/[`Outcome::Busy`] mean the processor did not
//!   store the payment; [`Outcome::Unknown`] means it may have (timeout, reset, garbage).
//!   Who calls: the consumer, from its tokio runtime.
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::iso8601;

/// What a `POST /payments` told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200: stored now.
    Stored,
    /// 422: the processor already had this correlationId.
    AlreadyStored,
    /// 5xx (or another 4xx): nothing stored.
    Failed(u16),
    /// 429: nothing stored; retry after this many seconds.
    Busy(u64),
    /// The request never left (connect failed): nothing stored.
    NotSent,
    /// Timeout, reset or unreadable answer after sending: may be stored.
    Unknown,
}

/// What `GET /payments/{id}` told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Stored, with this requestedAt.
    Found(Option<i64>),
    /// 404.
    NotFound,
    /// No usable answer.
    Error,
}

/// `GET /payments/service-health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The processor says it fails.
    pub failing: bool,
    /// Its configured delay.
    pub min_response_ms: u32,
}

/// A processor's base URL broken down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP as written.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Endpoint {
    /// Parses `http://host:port` (a trailing `/` allowed; https is refused).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("{url}: give the base URL without a path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("{url}: bad port"))?),
            None => (rest, 80),
        };
        if host.is_empty() {
            return Err(format!("{url}: missing host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

/// The client of one processor.
pub struct ProcessorClient {
    endpoint: Endpoint,
    resolved: Mutex<Resolved>,
    pool: Mutex<Vec<TcpStream>>,
    timeout: Duration,
}

/// The processor's address and when its name was last looked up: after a failed connect it is
/// looked up again, at most once per [`RESOLVE_EVERY`], so a processor that is down does not
/// turn every payment into a DNS query.
#[derive(Default)]
struct Resolved {
    addr: Option<SocketAddr>,
    looked_up_at: Option<Instant>,
}

struct Answer {
    status: u16,
    retry_after: u64,
    body: Vec<u8>,
    reusable: bool,
}

impl ProcessorClient {
    /// A client of `endpoint` whose requests give up after `timeout`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> ProcessorClient {
        let c = ProcessorClient {
            endpoint,
            resolved: Mutex::new(Resolved::default()),
            pool: Mutex::new(Vec::new()),
            timeout,
        };
        // Looked up once here, at start-up, before any payment (blocking is fine here: no
        // runtime is running yet), so that the first payments find an address; after a
        // failed connect it is looked up again asynchronously (`resolve`).
        let found = (c.endpoint.host.as_str(), c.endpoint.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next());
        if let Ok(mut r) = c.resolved.lock() {
            r.addr = found;
        }
        c
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Looks the host up again (asynchronously: the runtime's other tasks go on meanwhile),
    /// unless that was done less than [`RESOLVE_EVERY`] ago; returns the address to use.
    async fn resolve(&self) -> Option<SocketAddr> {
        let due = self.resolved.lock().is_ok_and(|mut r| {
            let due = r.looked_up_at.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY);
            if due {
                r.looked_up_at = Some(Instant::now());
            }
            due
        });
        if due {
            let host = (self.endpoint.host.as_str(), self.endpoint.port);
            if let Some(found) = tokio::net::lookup_host(host)
                .await
                .ok()
                .and_then(|mut a| a.next())
            {
                if let Ok(mut r) = self.resolved.lock() {
                    r.addr = Some(found);
                }
            }
        }
        self.known_addr()
    }

    /// The address last found, if any.
    fn known_addr(&self) -> Option<SocketAddr> {
        self.resolved.lock().ok().and_then(|r| r.addr)
    }

    async fn connection(&self) -> Option<TcpStream> {
        while let Some(c) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            // A kept-alive connection the processor has closed meanwhile would turn the next
            // request into an unknown outcome (written, then no answer): check it first. An
            // idle healthy connection has nothing to read.
            let mut probe = [0u8; 1];
            match c.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(c),
                _ => continue,
            }
        }
        let addr = match self.known_addr() {
            Some(a) => a,
            None => self.resolve().await?,
        };
        let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
        match connect {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            _ => {
                // A container that restarted may have a new address.
                if self.endpoint.host.parse::<std::net::IpAddr>().is_err() {
                    self.resolve().await;
                }
                None
            }
        }
    }

    fn give_back(&self, s: TcpStream) {
        if let Ok(mut p) = self.pool.lock() {
            if p.len() < 4096 {
                p.push(s);
            }
        }
    }

    /// Sends one request and reads its answer. `Err(sent)` on failure: whether the request
    /// may have reached the processor.
    async fn exchange(&self, request: &[u8]) -> Result<Answer, bool> {
        let mut stream = self.connection().await.ok_or(false)?;
        let work = async {
            stream.write_all(request).await.map_err(|_| true)?;
            read_answer(&mut stream).await.map_err(|_| true)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(answer)) => {
                if answer.reusable {
                    self.give_back(stream);
                }
                Ok(answer)
            }
            Ok(Err(sent)) => Err(sent),
            Err(_) => Err(true),
        }
    }

    /// `POST /payments` with `{"correlationId","amount","requestedAt"}`, written into a
    /// buffer on the stack (no allocation unless the host name is very long).
    pub async fn pay(&self, id: &[u8; 16], cents: u64, requested_at_ms: i64) -> Outcome {
        let mut body = [0u8; 192];
        let body_len = write_payment(&mut body, id, cents, requested_at_ms);
        let body = &body[..body_len];
        let mut req = [0u8; 512];
        let mut w = &mut req[..];
        let head = write!(
            w,
            "POST /payments HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.endpoint.host,
            body.len()
        )
        .and_then(|()| w.write_all(body));
        let free = w.len();
        let heap;
        let req: &[u8] = match head {
            Ok(()) => &req[..req.len() - free],
            Err(_) => {
                let mut v = format!(
                    "POST /payments HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    self.endpoint.host,
                    body.len()
                )
                .into_bytes();
                v.extend_from_slice(body);
                heap = v;
                &heap
            }
        };
        match self.exchange(req).await {
            Ok(a) => match a.status {
                200..=299 => Outcome::Stored,
                422 => Outcome::AlreadyStored,
                429 => Outcome::Busy(a.retry_after),
                408 => Outcome::Unknown,
                s => Outcome::Failed(s),
            },
            Err(false) => Outcome::NotSent,
            Err(true) => Outcome::Unknown,
        }
    }

    /// `GET /payments/{id}`.
    pub async fn lookup(&self, id: &[u8; 16]) -> Lookup {
        let mut idbuf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::from_bytes(*id)
            .hyphenated()
            .encode_lower(&mut idbuf);
        let req = format!(
            "GET /payments/{id} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.endpoint.host
        );
        match self.exchange(req.as_bytes()).await {
            Ok(a) if a.status == 200 => {
                let at = serde_json::from_slice::<serde_json::Value>(&a.body)
                    .ok()
                    .and_then(|v| {
                        v.get("requestedAt")
                            .and_then(|t| t.as_str())
                            .and_then(iso8601::parse_ms)
                    });
                Lookup::Found(at)
            }
            Ok(a) if a.status == 404 => Lookup::NotFound,
            _ => Lookup::Error,
        }
    }

    /// `GET /payments/service-health`; `None` if it did not answer 200 with the right JSON.
    pub async fn health(&self) -> Option<Health> {
        let req = format!(
            "GET /payments/service-health HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.endpoint.host
        );
        let a = self.exchange(req.as_bytes()).await.ok()?;
        if a.status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
        Some(Health {
            failing: v.get("failing")?.as_bool()?,
            min_response_ms: u32::try_from(v.get("minResponseTime")?.as_u64()?).unwrap_or(u32::MAX),
        })
    }
}

/// Writes `{"correlationId":"...","amount":20.05,"requestedAt":"..."}` into `out` and
/// returns its length (at most 130 bytes: `out` must hold 192).
pub fn write_payment(
    out: &mut [u8; 192],
    id: &[u8; 16],
    cents: u64,
    requested_at_ms: i64,
) -> usize {
    let mut ts = [0u8; 24];
    let mut idbuf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::from_bytes(*id)
        .hyphenated()
        .encode_lower(&mut idbuf);
    let mut w = &mut out[..];
    // 17 + 36 + 11 + 20 + 1 + 2 + 16 + 24 + 2 = 129 bytes at most: always fits.
    let _ = write!(
        w,
        r#"{{"correlationId":"{id}","amount":{}.{:02},"requestedAt":"{}"}}"#,
        cents / 100,
        cents % 100,
        iso8601::format_ms(requested_at_ms, &mut ts)
    );
    let free = w.len();
    out.len() - free
}

/// How often a processor's host name may be looked up again after a failed connect.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// The largest answer body we read from a processor. Its answers are a few dozen bytes; a
/// larger one is a broken or hostile server, and reading it would only cost memory.
const MAX_BODY: usize = 64 * 1024;

/// Reads one HTTP/1.1 response (head, then a Content-Length or chunked body). A malformed
/// answer, or a body over [`MAX_BODY`], is an `InvalidData` error, never a panic.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Answer> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let (status, retry_after, head_len, length, chunked, close) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed before the answer"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut rsp = httparse::Response::new(&mut headers);
        match rsp.parse(&buf).map_err(|_| bad("malformed answer"))? {
            httparse::Status::Partial => {
                if buf.len() > 64 * 1024 {
                    return Err(bad("answer head too large"));
                }
            }
            httparse::Status::Complete(head) => {
                let mut length = None;
                let mut chunked = false;
                let mut close = rsp.version == Some(0);
                let mut retry = 1;
                for h in rsp.headers.iter() {
                    let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(v.parse::<usize>().map_err(|_| bad("bad content-length"))?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.to_ascii_lowercase().contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = v.eq_ignore_ascii_case("close");
                    } else if h.name.eq_ignore_ascii_case("retry-after") {
                        retry = v.parse::<u64>().unwrap_or(1);
                    }
                }
                break (rsp.code.unwrap_or(0), retry, head, length, chunked, close);
            }
        }
    };
    let mut body = buf.split_off(head_len);
    if chunked {
        let body = read_chunked(stream, body).await?;
        return Ok(Answer {
            status,
            retry_after,
            body,
            reusable: !close,
        });
    }
    match length {
        Some(len) if len > MAX_BODY => Err(bad("answer body too large")),
        Some(len) => {
            while body.len() < len {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(bad("body truncated"));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            if body.len() > len {
                return Err(bad("more bytes than announced"));
            }
            Ok(Answer {
                status,
                retry_after,
                body,
                reusable: !close,
            })
        }
        None if status == 204 || status == 304 || (100..200).contains(&status) => Ok(Answer {
            status,
            retry_after,
            body,
            reusable: !close,
        }),
        None => {
            // Body until close.
            loop {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
                if body.len() > MAX_BODY {
                    return Err(bad("answer body too large"));
                }
            }
            Ok(Answer {
                status,
                retry_after,
                body,
                reusable: false,
            })
        }
    }
}

/// Decodes a chunked body whose first bytes are already in `pending`.
async fn read_chunked(stream: &mut TcpStream, mut pending: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut pos = 0;
    loop {
        // Need a full size line.
        let line_end = loop {
            if let Some(i) = pending[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            if pending.len() - pos > 1024 {
                return Err(bad("chunk size line too long"));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("chunked body truncated"));
            }
            pending.extend_from_slice(&chunk[..n]);
        };
        let line =
            std::str::from_utf8(&pending[pos..line_end]).map_err(|_| bad("bad chunk size"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        if size > MAX_BODY - out.len() {
            return Err(bad("answer body too large"));
        }
        pos = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                if let Some(i) = pending[pos..].windows(2).position(|w| w == b"\r\n") {
                    if i == 0 {
                        return Ok(out);
                    }
                    pos += i + 2;
                    continue;
                }
                if pending.len() - pos > MAX_BODY {
                    return Err(bad("trailers too large"));
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(bad("chunked trailer truncated"));
                }
                pending.extend_from_slice(&chunk[..n]);
            }
        }
        while pending.len() < pos + size + 2 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("chunk truncated"));
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        out.extend_from_slice(&pending[pos..pos + size]);
        if &pending[pos + size..pos + size + 2] != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("http://payment-processor-default:8080/"),
            Ok(Endpoint {
                host: "payment-processor-default".into(),
                port: 8080
            })
        );
        assert_eq!(Endpoint::parse("http://127.0.0.1").map(|e| e.port), Ok(80));
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://x:1/path").is_err());
        assert!(Endpoint::parse("http://:1").is_err());
        assert!(Endpoint::parse("http://x:99999").is_err());
    }

    async fn serve_once(reply: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 2048];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(reply).await;
            }
        });
        addr
    }

    fn client(addr: SocketAddr) -> ProcessorClient {
        ProcessorClient::new(
            Endpoint {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            Duration::from_millis(500),
        )
    }

    #[tokio::test]
    async fn classifies_answers() {
        let cases: [(&'static [u8], Outcome); 9] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                Outcome::Stored,
            ),
            (
                b"HTTP/1.1 422 X\r\nContent-Length: 0\r\n\r\n",
                Outcome::AlreadyStored,
            ),
            (
                b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n",
                Outcome::Failed(500),
            ),
            (
                b"HTTP/1.1 429 X\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n",
                Outcome::Busy(5),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                Outcome::Stored,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{}",
                Outcome::Unknown,
            ),
            // A chunk size that would overflow `pos + size` (it used to panic the task).
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n{}\r\n0\r\n\r\n",
                Outcome::Unknown,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n{}",
                Outcome::Unknown,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n{}\r\n0\r\n\r\n",
                Outcome::Unknown,
            ),
        ];
        for (reply, want) in cases {
            let c = client(serve_once(reply).await);
            assert_eq!(
                c.pay(&[1; 16], 2005, 0).await,
                want,
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(client(closed).pay(&[1; 16], 1, 0).await, Outcome::NotSent);
    }

    #[test]
    fn the_request_body_is_exact() {
        let mut out = [0u8; 192];
        let id = *uuid::Uuid::parse_str("4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3")
            .unwrap()
            .as_bytes();
        let n = write_payment(&mut out, &id, 2005, 1_752_150_896_789);
        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            r#"{"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3","amount":20.05,"requestedAt":"2025-07-10T12:34:56.789Z"}"#
        );
        let n = write_payment(&mut out, &[0xff; 16], u64::MAX, 253_402_300_799_999);
        assert!(n < 192, "{n}");
    }

    #[tokio::test]
    async fn a_connection_the_processor_closed_is_not_reused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            // Each connection answers one request then closes (keep-alive not announced as
            // closed, like a server whose idle timeout fired).
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 2048];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    .await;
            }
        });
        let c = client(addr);
        assert_eq!(c.pay(&[1; 16], 1, 0).await, Outcome::Stored);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(c.pay(&[2; 16], 1, 0).await, Outcome::Stored);
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded() {
        let addr = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"failing\":false\r\n16;x=y\r\n,\"minResponseTime\":12}\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .await;
        assert_eq!(
            client(addr).health().await,
            Some(Health {
                failing: false,
                min_response_ms: 12
            })
        );
    }
}
