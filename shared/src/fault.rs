//! Test-only fault injection: fail, or drop the connection of, the N-th
//! external call of a task.
//!
//! The crash-point matrix (tests/integration/crash_points.rs) proves the
//! never-lock-out promise by failing every external call of a rotation in
//! turn: each database login and statement (counted here, where the engines
//! make them) and each Secrets Manager request (counted by the test's store
//! wrapper through [`call`]). One [`Plan`] counts the calls of everything
//! awaited inside [`scope`] and fires once, at call number `at`:
//!
//! - [`Fault::Fail`]: the call is not made; it fails as an unreachable
//!   server would.
//! - [`Fault::Drop`]: the call is made, then its answer is lost, as when the
//!   connection drops mid-call: the server did the work (or, inside a
//!   transaction, rolls it back when the connection goes), the caller sees an
//!   error.
//!
//! Without the `fault-injection` feature [`call`] is the bare call: release
//! builds carry no hook. With it, a task outside any [`scope`] is untouched.

use crate::error::Result;

#[cfg(feature = "fault-injection")]
pub use enabled::*;

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::error::{Error, Result};

    /// What happens to the chosen call.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// Not made; fails as an unreachable server would.
        Fail,
        /// Made, then the answer is lost (the connection drops mid-call).
        Drop,
    }

    impl Fault {
        pub fn name(self) -> &'static str {
            match self {
                Fault::Fail => "fail",
                Fault::Drop => "drop",
            }
        }
    }

    /// One injection: which call, what happens, and what was seen.
    #[derive(Debug)]
    pub struct Plan {
        at: usize,
        fault: Fault,
        calls: AtomicUsize,
        fired: Mutex<Option<String>>,
    }

    impl Plan {
        /// Fires at call number `at` (1-based); `usize::MAX` only counts.
        pub fn new(at: usize, fault: Fault) -> Arc<Plan> {
            Arc::new(Plan {
                at,
                fault,
                calls: AtomicUsize::new(0),
                fired: Mutex::new(None),
            })
        }

        /// External calls counted so far.
        pub fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        /// The call the fault hit (`server: what`), once it fired.
        pub fn fired(&self) -> Option<String> {
            self.fired.lock().ok().and_then(|f| f.clone())
        }
    }

    tokio::task_local! {
        static PLAN: Arc<Plan>;
    }

    /// Runs `f` with `plan` counting its external calls.
    pub async fn scope<F: Future>(plan: Arc<Plan>, f: F) -> F::Output {
        PLAN.scope(plan, f).await
    }

    /// One external call to `server` (`what` names it in the fired record).
    pub async fn call<T>(
        server: &str,
        what: &str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Ok(plan) = PLAN.try_with(Arc::clone) else {
            return f.await;
        };
        let n = plan.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n != plan.at {
            return f.await;
        }
        if let Ok(mut fired) = plan.fired.lock() {
            *fired = Some(format!("{server}: {what}"));
        }
        if plan.fault == Fault::Drop {
            // The server does the work; only the answer is lost.
            let _ = f.await;
        }
        Err(Error::Unreachable {
            endpoint: server.to_string(),
            detail: format!(
                "injected fault ({}) at external call {n}: {what}",
                plan.fault.name()
            ),
        })
    }
}

/// A read, counted as an external call made just after this point: a read
/// has no effect on the server, so losing its answer is the same as never
/// making it, and both faults fail here.
pub async fn point(server: &str, what: &str) -> Result<()> {
    call(server, what, async { Ok(()) }).await
}

/// Without the feature: the call itself.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn call<T>(
    _server: &str,
    _what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    f.await
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn fires_once_at_the_chosen_call_and_drop_still_does_the_work() {
        let done = AtomicUsize::new(0);
        let work = || async {
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        let plan = Plan::new(2, Fault::Drop);
        let results = scope(plan.clone(), async {
            let mut r = Vec::new();
            for i in 0..3 {
                r.push(
                    call("db:5432", &format!("statement {i}"), work())
                        .await
                        .is_ok(),
                );
            }
            r
        })
        .await;
        assert_eq!(results, [true, false, true]);
        assert_eq!(done.load(Ordering::SeqCst), 3, "drop runs the call");
        assert_eq!(plan.calls(), 3);
        assert_eq!(plan.fired().as_deref(), Some("db:5432: statement 1"));

        let plan = Plan::new(1, Fault::Fail);
        let r = scope(plan, call("db", "x", work())).await;
        assert!(r.unwrap_err().is_retryable());
        assert_eq!(done.load(Ordering::SeqCst), 3, "fail does not run it");
        // Outside a scope nothing is counted or failed.
        assert!(call("db", "x", work()).await.is_ok());
    }
}
