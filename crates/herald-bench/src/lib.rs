//! herald-bench's HTTP/1.1 client and its TCP connect, as a library.
//!
//! The load generator (the `herald-bench` binary, `src/main.rs`) and
//! Herald's integration tests (`crates/herald/tests/common`) share this one
//! client rather than each keeping its own. It is hand-written, not hyper's,
//! because the load tool holds tens of thousands of connections on the same
//! two cores as the server it measures; BENCHMARKS.md ("One HTTP client")
//! has the figures that decided it.
//!
//! - `net`: outgoing TCP connections, optionally from a chosen loopback
//!   source address;
//! - `http`: requests, response heads and incrementally read bodies
//!   (sized, chunked, or to the end of the connection).

pub mod http;
pub mod net;
