//! Critical tasks: the process must not outlive one. A task that ends without being asked to
//! (it returned, failed or panicked) is a [`Death`], which `weft server` waits on beside its
//! work: it then ends with an error naming the task, so that an orchestrator restarts it. A
//! dead gRPC server used to leave a process that answered REST (and /readyz said only that it
//! was not serving); a dead change-log follower, one whose compiler never moved again.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves when a critical task has died: with what happened to it.
#[derive(Debug, Clone)]
pub struct Death(watch::Receiver<Option<String>>);

impl Death {
    /// What ended the task, once it has died; never, while it lives or once it has ended as
    /// asked.
    pub async fn wait(&self) -> String {
        let mut notice = self.0.clone();
        // The reason is copied out first: the watch's guard must not be held across an await
        // (the future is sent between threads).
        let reason = notice.wait_for(Option::is_some).await.map(|r| r.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }

    /// A death that never comes (for a part a process does not run).
    pub fn never() -> Death {
        Death(watch::channel(None).1)
    }
}

/// Runs `task` as the critical task `name`. Its end is a death unless `shutdown` was true by
/// then. The handle completes when the task has ended, however it ended.
pub fn spawn_critical<F>(name: &'static str, task: F, shutdown: watch::Receiver<bool>) -> (JoinHandle<()>, Death)
where
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let (notice, death) = watch::channel(None);
    let inner = tokio::spawn(task);
    let monitor = tokio::spawn(async move {
        let outcome = inner.await;
        if *shutdown.borrow() {
            return;
        }
        let reason = match outcome {
            Ok(Ok(())) => format!("{name} ended"),
            Ok(Err(e)) => format!("{name} failed: {e}"),
            Err(e) if e.is_panic() => {
                format!("{name} panicked: {}", weft_model::panic_message(&*e.into_panic()))
            }
            Err(_) => format!("{name} was cancelled"),
        };
        tracing::error!(task = name, reason = %reason, "a critical task died; the process ends");
        notice.send_replace(Some(reason));
    });
    (monitor, Death(death))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn died_within(death: &Death, within: Duration) -> Option<String> {
        tokio::time::timeout(within, death.wait()).await.ok()
    }

    #[tokio::test]
    async fn a_task_that_returns_fails_or_panics_unasked_is_a_death_naming_it() {
        let (_stop, shutdown) = watch::channel(false);
        let (_, returned) = spawn_critical("the follower", async { Ok(()) }, shutdown.clone());
        let (_, failed) = spawn_critical("the gRPC server", async { Err("address in use".into()) }, shutdown.clone());
        let (_, panicked) = spawn_critical("the compactor", async { panic!("boom") }, shutdown.clone());
        let second = Duration::from_secs(1);
        assert_eq!(died_within(&returned, second).await.as_deref(), Some("the follower ended"));
        assert_eq!(died_within(&failed, second).await.as_deref(), Some("the gRPC server failed: address in use"));
        assert_eq!(died_within(&panicked, second).await.as_deref(), Some("the compactor panicked: boom"));
    }

    #[tokio::test]
    async fn a_task_that_ends_as_asked_or_lives_on_is_no_death() {
        let (stop, shutdown) = watch::channel(false);
        let (_, living) = spawn_critical("living", std::future::pending(), shutdown.clone());
        let mut asked = shutdown.clone();
        let (handle, stopped) = spawn_critical(
            "stopping",
            async move {
                let _ = asked.wait_for(|s| *s).await;
                Ok(())
            },
            shutdown.clone(),
        );
        assert_eq!(died_within(&living, Duration::from_millis(100)).await, None);
        stop.send_replace(true);
        handle.await.expect("the monitor ends with its task");
        assert_eq!(died_within(&stopped, Duration::from_millis(100)).await, None);
        assert_eq!(died_within(&Death::never(), Duration::from_millis(10)).await, None);
    }
}
