//! How every Redis call is made: bounded by a timeout, its errors mapped to
//! [`EngineError`], and the numbers it sends clamped to what Lua and Redis
//! take exactly. Shared by the engine and its background tasks; it imports
//! nothing else of this crate.

use std::future::Future;
use std::time::Duration;

use herald_core::engine::EngineError;
use redis::{RedisError, RedisResult};
use tokio::time::timeout;

/// Ages and lengths beyond this are treated as "no limit": Lua numbers are
/// doubles, exact only up to 2^53, and Redis expiries must not overflow.
pub(crate) const UNLIMITED: u64 = 1 << 50;

/// Awaits a Redis future within `t`.
pub(crate) async fn bounded<T>(
    t: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, EngineError> {
    match timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_error(&e)),
        Err(_) => Err(EngineError::Unavailable(format!(
            "redis did not answer within {t:?}"
        ))),
    }
}

/// A key of another type or a reply we cannot read means the data is not
/// ours; everything else (I/O, timeouts, OOM, loading, read-only replica)
/// means Redis cannot serve right now.
fn map_error(e: &RedisError) -> EngineError {
    let wrong_data = e.code() == Some("WRONGTYPE")
        || matches!(
            e.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        );
    if wrong_data {
        EngineError::Corrupt(e.to_string())
    } else {
        EngineError::Unavailable(e.to_string())
    }
}

/// A duration in whole milliseconds, at least 1 (Redis rejects a zero
/// expiry) and at most what Lua and Redis expiries take exactly.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(UNLIMITED)
        .clamp(1, UNLIMITED)
}
