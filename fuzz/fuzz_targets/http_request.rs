//! Any bytes a client may send, through the API's HTTP/1.1 request parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rinha::http::fuzz::request(data));
