//! Any body of `POST /payments`, through the payment decoder.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rinha::api::payment::fuzz_check(data));
