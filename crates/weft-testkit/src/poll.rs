//! Waiting for a condition in tests: one way to poll, instead of a loop written per file.
//!
//! A check answers `Ok(value)` when the condition holds, or `Err(what it sees)`; after the
//! patience runs out the test fails naming what it waited for and what the last check saw
//! (written out only then: it may be a process's whole log).
//! Checks are repeated at a short, growing interval (1 ms doubling to 50 ms): a condition that
//! holds soon is seen soon, and a slow one costs little.

use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Polls `check` until it answers `Ok`, and returns its value; panics after `patience`.
pub async fn eventually<T, E>(what: &str, patience: Duration, mut check: impl AsyncFnMut() -> Result<T, E>) -> T
where
    E: std::fmt::Display,
{
    let deadline = Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(Instant::now() < deadline, "{what}: not within {patience:?}; last seen: {seen}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// [`eventually`] for tests without an async runtime (those that drive processes).
pub fn eventually_blocking<T, E: std::fmt::Display>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match check() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(Instant::now() < deadline, "{what}: not within {patience:?}; last seen: {seen}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// `Ok(())` when `holds`, else `Err(seen)`: a check from a condition and what to show of it.
pub fn when(holds: bool, seen: impl std::fmt::Debug) -> Result<(), String> {
    if holds { Ok(()) } else { Err(format!("{seen:?}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_the_check_found_once_it_holds() {
        let mut calls = 0;
        let found = eventually_blocking("the third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 { Ok(calls) } else { Err(format!("call {calls}")) }
        });
        assert_eq!(found, 3);
    }

    #[test]
    #[should_panic(expected = "never: not within 20ms; last seen: still no")]
    fn fails_naming_what_it_waited_for_and_what_it_saw() {
        eventually_blocking("never", Duration::from_millis(20), || Err::<(), _>("still no".to_string()));
    }

    #[tokio::test]
    async fn waits_without_blocking_the_runtime() {
        let started = Instant::now();
        let at = eventually("a moment", Duration::from_secs(5), || async {
            when(started.elapsed() >= Duration::from_millis(20), started.elapsed())
        })
        .await;
        assert_eq!(at, ());
    }
}
