//! The bodies of the fuzz targets over the request parser (`fuzz/fuzz_targets/http_request.rs`,
//! and `tests/fuzz_corpus.rs` on stable). Not part of the engine's API: public only so that
//! those can reach the private parser.
//!
//! [`request`] asserts what must hold for any bytes a client may send: no panic; a rejection
//! is a 4xx/5xx whose body is JSON; and the outcome (requests handled, first rejection) does
//! not depend on how the bytes were split into reads.
use super::{parse_and_handle, Handler, Limits, Parsed, Request, Response};

/// (method, path?query, body) of one handled request.
pub type Req = (String, String, Vec<u8>);

/// Records what it saw; answers 200.
#[derive(Default, Clone)]
struct Seen(Vec<Req>);
impl Handler for Seen {
    fn handle(&mut self, req: &Request<'_>, rsp: &mut Response) {
        self.0.push((
            req.method.to_string(),
            format!("{}?{}", req.path, req.query),
            req.body.to_vec(),
        ));
        rsp.status(200);
    }
}

/// Feeds `bytes` to the parser in pieces of `cuts`, like `connection` does; returns the
/// requests handled and the first rejection code.
pub fn drive(bytes: &[u8], cuts: &[usize]) -> (Vec<Req>, Option<u16>) {
    let limits = Limits::default();
    let mut seen = Seen::default();
    let mut rsp = Response::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    for p in points {
        buf.extend_from_slice(&bytes[fed..p.max(fed)]);
        fed = p.max(fed);
        loop {
            match parse_and_handle(&buf, &mut seen, &mut rsp, &limits) {
                Parsed::Done { used, .. } => {
                    assert!(used > 0 && used <= buf.len());
                    buf.drain(..used);
                }
                Parsed::Partial => break,
                Parsed::Reject(code, body) => {
                    assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
                    return (seen.0, Some(code));
                }
            }
        }
    }
    (seen.0, None)
}

/// Checks the parser's promises on `data` (see the module doc); panics if one breaks.
pub fn request(data: &[u8]) {
    let whole = drive(data, &[]);
    if let Some(code) = whole.1 {
        assert!((400..600).contains(&code), "rejection code {code}");
    }
    // Two other ways the same bytes may arrive: in two reads cut where the input says, and
    // one byte at a time (short inputs only, to keep each run cheap).
    let cut = data.first().map_or(0, |&b| b as usize * data.len() / 256);
    assert_eq!(drive(data, &[cut]), whole, "split at {cut}");
    if data.len() <= 512 {
        let bytewise: Vec<usize> = (1..data.len()).collect();
        assert_eq!(drive(data, &bytewise), whole, "fed byte by byte");
    }
}
