//! Test support shared by the engines' test suites (cargo feature
//! `testing`; never part of a server build).
//!
//! - [`contract`]: the behaviour every [`Engine`](crate::engine::Engine)
//!   promises, written once and run against each engine.
//! - [`eventually`]: the bounded wait for asynchronous state.

pub mod contract;

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// How long anything asynchronous may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Retries `check` until it yields a value, failing the test (naming
/// `what`) once [`WAIT`] has passed. The pause between tries only paces the
/// polling; the test asserts on the condition, never on the time slept.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}
