//! The change-log follower, written once: a consistent snapshot, then the change log after
//! it, page by page as the safe horizon moves, and a new snapshot when the log was compacted
//! past the follower. The API's object cache and the controller's compiler both follow the
//! store through it; what each does with what it is told is theirs.
//!
//! ```text
//!            ┌──────────── Reset, Snapshot(chunk)…, Loaded{revision, included} ─────────┐
//!   Loading ─┴─► Following{cursor} ── Batch{revision, changes}…, Advanced(up_to) ──► (waits
//!      ▲   (snapshot failed: retry       │   (page unavailable: the same page again)    for the
//!      │    after the backoff)           │                                              horizon)
//!      └──────── Reloading ◄─────────────┘ the log was compacted past the cursor, a page
//!                                             failed, or the sink asked for it (Next::Reload)
//! ```
//!
//! The promise (DESIGN.md §1): once `Advanced(r)` is emitted, every revision ≤ r has been
//! given exactly once, in the snapshot or as one `Batch`, and nothing above r has; a
//! revision the snapshot already holds (committed while it was taken) is never given again.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Change, ChangePage, Result, Store, StoreError, StoredObject};

/// Where a follower reads: a snapshot and pages of the change log. [`Store`] is the real
/// one; tests use a fake with the same contract.
pub trait ChangeSource: Sync {
    /// Every object as of one consistent moment, `chunk` objects at a time to `take`; the
    /// revision the snapshot holds everything up to, and the later revisions it holds too.
    fn snapshot(
        &self,
        chunk: usize,
        take: &mut (dyn FnMut(Vec<StoredObject>) + Send),
    ) -> impl Future<Output = Result<(i64, BTreeSet<i64>)>> + Send;

    /// The whole revisions after `since`, up to `horizon` and at most `max_revisions` of them
    /// ([`Store::changes_until`]); [`StoreError::Compacted`] when `since` is no longer kept.
    fn changes_until(
        &self,
        since: i64,
        horizon: i64,
        max_revisions: i64,
    ) -> impl Future<Output = Result<ChangePage>> + Send;
}

impl ChangeSource for Store {
    async fn snapshot(
        &self,
        chunk: usize,
        take: &mut (dyn FnMut(Vec<StoredObject>) + Send),
    ) -> Result<(i64, BTreeSet<i64>)> {
        self.snapshot_in_chunks(chunk, take).await
    }

    async fn changes_until(&self, since: i64, horizon: i64, max_revisions: i64) -> Result<ChangePage> {
        Store::changes_until(self, since, horizon, max_revisions).await
    }
}

/// What a follower is told, in this order: `Reset`, the snapshot's chunks, `Loaded`, then
/// `Batch`es and `Advanced` as the log moves on; after a compaction, `Reset` again.
#[derive(Debug)]
pub enum Event<'a> {
    /// A snapshot begins: what was followed so far is to be replaced by it.
    Reset,
    /// Some of the snapshot's objects.
    Snapshot(Vec<StoredObject>),
    /// The snapshot is whole: it holds every revision up to `revision`, and `included`.
    Loaded { revision: i64, included: &'a BTreeSet<i64> },
    /// One revision's changes, in their order.
    Batch { revision: i64, changes: &'a [Change] },
    /// Every revision up to here has been given (one without a batch was rolled back, or
    /// the snapshot held it).
    Advanced(i64),
}

/// What the follower does after an event: go on, or start again from a snapshot because
/// what was built from the events can no longer be trusted (the controller's compiler
/// panicked halfway through a revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Reload,
}

/// How a follower reads and waits.
#[derive(Debug, Clone, Copy)]
pub struct FollowConfig {
    /// Objects per snapshot chunk.
    pub chunk: usize,
    /// Revisions per page of the change log.
    pub page_revisions: i64,
    /// After a snapshot or a page fails: the first wait, doubled up to `most_backoff`, and
    /// back to the first once one succeeds.
    pub first_backoff: Duration,
    pub most_backoff: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        FollowConfig {
            chunk: 1000,
            page_revisions: 1000,
            first_backoff: Duration::from_millis(200),
            most_backoff: Duration::from_secs(5),
        }
    }
}

/// Where the follower is.
#[derive(Debug)]
enum State {
    /// A snapshot is to be taken (at the start, or again after `Reloading`).
    Loading,
    /// Every revision up to `cursor` has been given.
    Following { cursor: i64, included: BTreeSet<i64> },
}

/// Follows `source` until `stop` completes or `horizon`'s sender is gone, telling `sink`
/// each [`Event`]; `sink` may ask for a reload ([`Next::Reload`]). `horizon` is the safe
/// horizon ([`Store::revision_watch`]): the follower reads up to it, and waits for it to move.
pub async fn follow<S: ChangeSource>(
    source: &S,
    mut horizon: watch::Receiver<i64>,
    config: FollowConfig,
    mut sink: impl FnMut(Event<'_>) -> Next + Send,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut state = State::Loading;
    let mut backoff = config.first_backoff;
    loop {
        let waited = match &mut state {
            State::Loading => {
                let mut next = sink(Event::Reset);
                let mut take = |chunk: Vec<StoredObject>| {
                    if next == Next::Continue {
                        next = sink(Event::Snapshot(chunk));
                    }
                };
                match source.snapshot(config.chunk, &mut take).await {
                    Ok((revision, included)) => {
                        if next == Next::Continue {
                            next = sink(Event::Loaded { revision, included: &included });
                        }
                        if next == Next::Reload {
                            tracing::warn!(revision, "the snapshot was not taken in; loading again");
                            Some(backoff)
                        } else {
                            backoff = config.first_backoff;
                            state = State::Following { cursor: revision, included };
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot load a snapshot; trying again");
                        Some(backoff)
                    }
                }
            }
            State::Following { cursor, included } => {
                let target = *horizon.borrow_and_update();
                if *cursor >= target {
                    tokio::select! {
                        changed = horizon.changed() => if changed.is_err() { return },
                        _ = &mut stop => return,
                    }
                    continue;
                }
                match source.changes_until(*cursor, target, config.page_revisions).await {
                    Ok(page) => {
                        let mut next = Next::Continue;
                        for (revision, changes) in revisions(&page.changes) {
                            if !included.contains(&revision) {
                                next = sink(Event::Batch { revision, changes });
                                if next == Next::Reload {
                                    tracing::warn!(revision, "a revision was not taken in; reloading");
                                    break;
                                }
                            }
                        }
                        if next == Next::Continue {
                            // The snapshot's later revisions are behind the cursor now.
                            *included = included.split_off(&(page.up_to + 1));
                            *cursor = page.up_to;
                            next = sink(Event::Advanced(page.up_to));
                            backoff = config.first_backoff;
                        }
                        if next == Next::Reload {
                            state = State::Loading;
                        }
                        None
                    }
                    Err(StoreError::Compacted { requested, compacted }) => {
                        tracing::warn!(requested, compacted, "fell behind the change log's compaction; reloading");
                        state = State::Loading;
                        None
                    }
                    // The database busy or away for a moment: the same page again shortly,
                    // not a reload of everything.
                    Err(e) if e.is_unavailable() => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot read the change log now; trying again");
                        Some(backoff)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot follow the change log; reloading");
                        state = State::Loading;
                        Some(backoff)
                    }
                }
            }
        };
        if let Some(wait) = waited {
            backoff = (backoff * 2).min(config.most_backoff);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => return,
            }
        }
    }
}

/// A page's changes, one whole revision at a time.
fn revisions(changes: &[Change]) -> impl Iterator<Item = (i64, &[Change])> {
    changes.chunk_by(|a, b| a.revision == b.revision).map(|run| (run[0].revision, run))
}

#[cfg(test)]
mod tests;
