//! Bounded time: every network call and statement gets a bound derived from
//! the remaining Lambda deadline, so a server that accepts TCP and never
//! answers, or a statement stuck behind a lock, ends in a clear, retryable
//! [`Error::Timeout`] while there is still time to report it.
//!
//! The runner sets the invocation's deadline once ([`scope`]); engines ask for
//! [`budget`] when they connect (it bounds the TCP connect, the TLS and
//! authentication handshake, and the server-side `statement_timeout` /
//! `lock_timeout` they set) and wrap each call in [`bounded`]. Outside a
//! scope (the CLI, tests) the engine's own default applies.
//!
//! Server-side limits are set a little *below* the client-side bound: a
//! statement that waits on a lock is then aborted by the server, which rolls
//! it back, rather than left to commit after Rotor has given up on it.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Time kept back from the Lambda deadline to log the failure and answer.
pub const REPORT_RESERVE: Duration = Duration::from_millis(1500);

/// No bound is ever shorter than this: a nearly spent invocation still gets
/// a real attempt rather than an instant, confusing timeout.
pub const MIN_BOUND: Duration = Duration::from_millis(200);

/// How much later than the calls inside it a whole step's backstop bound
/// fires. Every call is bounded by [`remaining`] and its timeout names its
/// server and call; the step's bound (the same instant, give or take the
/// timer's millisecond) must not win that race and report only "the step"
/// (the margin comes out of [`REPORT_RESERVE`]).
pub const BACKSTOP_GRACE: Duration = Duration::from_millis(100);

/// Runs `f` with `deadline` as the invocation's deadline.
pub async fn scope<F: Future>(deadline: Option<Instant>, f: F) -> F::Output {
    match deadline {
        Some(d) => DEADLINE.scope(d, f).await,
        None => f.await,
    }
}

/// The Lambda context's deadline (milliseconds since the Unix epoch) as an
/// [`Instant`]; `None` when it is absent or already past.
pub fn from_epoch_millis(deadline_ms: u64) -> Option<Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    let left = u128::from(deadline_ms).checked_sub(now_ms)?;
    Instant::now().checked_add(Duration::from_millis(u64::try_from(left).ok()?))
}

/// Time left before the reserve, when a deadline is set.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.saturating_duration_since(Instant::now()))
        .ok()
        .map(|left| left.saturating_sub(REPORT_RESERVE))
}

/// The bound for one operation whose own limit is `default`: the smaller of
/// the two when a deadline is set, never below [`MIN_BOUND`].
pub fn budget(default: Duration) -> Duration {
    remaining()
        .map_or(default, |left| left.min(default))
        .max(MIN_BOUND)
}

/// Server-side statement and lock limits for a session opened with `bound`:
/// a fraction below it, so the server gives up (and rolls back) first.
pub fn server_limit(bound: Duration) -> Duration {
    let margin = (bound / 5).clamp(Duration::from_millis(50), Duration::from_secs(1));
    bound.saturating_sub(margin).max(MIN_BOUND / 2)
}

/// Awaits `f` for at most `bound`; on expiry, an [`Error::Timeout`] naming
/// `endpoint` and `what` (nothing else is changed by Rotor after that).
pub async fn bounded<T>(
    endpoint: &str,
    what: &str,
    bound: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(bound, f).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            endpoint: endpoint.to_string(),
            what: what.to_string(),
            after_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn budget_follows_the_deadline() {
        assert_eq!(budget(Duration::from_secs(5)), Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(3);
        scope(Some(deadline), async {
            let b = budget(Duration::from_secs(5));
            assert!(b <= Duration::from_millis(1500) && b > Duration::from_millis(1000));
            assert_eq!(
                budget(Duration::from_millis(300)),
                Duration::from_millis(300)
            );
        })
        .await;
        let spent = Instant::now();
        scope(Some(spent), async {
            assert_eq!(budget(Duration::from_secs(5)), MIN_BOUND);
        })
        .await;
    }

    #[test]
    fn server_limits_stay_below_the_client_bound() {
        for ms in [200, 1000, 5000, 30_000] {
            let bound = Duration::from_millis(ms);
            assert!(server_limit(bound) < bound, "{ms}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_names_what_timed_out() {
        let e = bounded(
            "db:5432",
            "the login handshake",
            Duration::from_millis(20),
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), "Timeout");
        assert!(e.is_retryable());
        let text = e.to_string();
        assert!(
            text.contains("db:5432") && text.contains("the login handshake"),
            "{text}"
        );
    }

    #[test]
    fn epoch_deadline() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(from_epoch_millis(now_ms - 10).is_none());
        let d = from_epoch_millis(now_ms + 10_000).unwrap();
        let left = d.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
    }
}
