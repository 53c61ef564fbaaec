//! rinha-shm: a payment intermediary for the Rinha de Backend 2025 contest.
//!
//! One binary (`rinha`) with a subcommand per role. The API processes and the
//! consumers share one memory-mapped file (see [`shm`] and `shm-layout.md`):
//! a payment ring and a stats log, so no request crosses a network between
//! our own processes.
//!
//! | module | owns |
//! |---|---|
//! | [`shm`] | the shared file: region, payment ring, stats log, in-flight table, process table |
//! | [`money`] | exact amounts: decimal text to integer cents and back |
//! | [`http`] | our HTTP/1.1 server loop on `may` coroutines (sockets handed over by the balancer) |
//! | [`api`] | `POST /payments`, `GET /payments-summary`, `POST /purge-payments` |
//! | [`lb`] | the balancer on port 9999: hands accepted sockets to API processes |
//! | [`consumer`] | takes payments off the ring, sends them to a processor, records the outcome |
//! | [`processor_client`] | keep-alive HTTP/1.1 client towards one payment processor |
//! | [`health`] | the health-poller lease and the routing verdict published in the region |
//! | [`sim`] | `rinha processor`: the payment-processor simulator |
//! | [`contest`] | `rinha contest`: the contest's final test reproduced, and its score |
//! | [`up`] | `rinha up`: starts every role natively, optional cgroup limits |
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod consumer;
pub mod contest;
pub mod health;
pub mod http;
pub mod iso8601;
pub mod lb;
pub mod money;
pub mod processor_client;
pub mod shm;
pub mod sim;
pub mod up;
