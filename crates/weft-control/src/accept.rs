//! The gRPC listener's connections, accepted without ever spinning. tonic takes a stream of
//! connections; a listener stream that yields each accept error at once made the server retry
//! at once, and when file descriptors ran out the accept loop burned a core (113 % CPU, issue
//! 17) while failing the same way. Here an accept that fails for want of resources waits
//! before the next try, twice as long each time up to a second, and says so once; an error of
//! one connection (it was reset before being accepted) is skipped.

use std::future::Future;
use std::time::Duration;

use futures::Stream;

/// The first and the longest pause after an accept failed for want of resources.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// Linux's errno values for a process or system out of what an accept needs: EMFILE, ENFILE,
/// ENOBUFS, ENOMEM.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// The connections `accept` gives, forever; it never yields an error.
pub(crate) fn incoming<S, F>(
    accept: impl FnMut() -> F + Send + 'static,
) -> impl Stream<Item = Result<S, std::io::Error>> + Send + 'static
where
    F: Future<Output = std::io::Result<S>> + Send,
    S: Send + 'static,
{
    futures::stream::unfold(accept, |mut accept| async move {
        let mut pause = Duration::ZERO;
        loop {
            match accept().await {
                Ok(stream) => return Some((Ok(stream), accept)),
                Err(e) if out_of_resources(&e) => {
                    if pause.is_zero() {
                        tracing::warn!(error = %e, "cannot accept agents' connections: out of resources; backing off");
                    }
                    pause = (pause * 2).clamp(FIRST_PAUSE, LONGEST_PAUSE);
                    tokio::time::sleep(pause).await;
                }
                Err(e) => tracing::debug!(error = %e, "an agent's connection failed before it was accepted"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;

    use super::*;

    /// Out of file descriptors for a while: the listener is tried a handful of times with
    /// growing pauses, not thousands of times in a loop, and the next connection comes through.
    /// (Real time: a slower machine only tries fewer times.)
    #[tokio::test]
    async fn an_accept_out_of_descriptors_backs_off_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let started = tokio::time::Instant::now();
        let mut connections = Box::pin(incoming(move || {
            let n = counted.fetch_add(1, Ordering::Relaxed);
            async move {
                // Out of descriptors for the first 600 ms, then a connection.
                if started.elapsed() < Duration::from_millis(600) {
                    Err(std::io::Error::from_raw_os_error(24))
                } else {
                    Ok(n)
                }
            }
        }));
        let tries = connections.next().await.expect("a connection").expect("no error is yielded");
        // 10, 20, 40, 80, 160, 320 ms: 7 tries; a spinning loop makes tens of thousands.
        assert!(tries <= 8, "the listener was tried {tries} times in 600 ms");
        // A connection's own error is skipped, not yielded.
        let mut failing_once = Box::pin(incoming({
            let mut failed = false;
            move || {
                let fail = !std::mem::replace(&mut failed, true);
                async move { if fail { Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted)) } else { Ok(7) } }
            }
        }));
        assert_eq!(failing_once.next().await.expect("a connection").expect("no error"), 7);
    }
}
