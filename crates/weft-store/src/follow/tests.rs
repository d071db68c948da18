//! The follower against a fake change log: a scripted history of revisions (some rolled
//! back), snapshots taken at a chosen revision that also hold some later ones, pages of any
//! size, a compaction that overtakes the follower, and a database away for a moment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use proptest::prelude::*;
use uuid::Uuid;
use weft_model::Kind;

use super::*;
use crate::ChangeOp;

/// One write of a revision: an object (by number) set to a value, or deleted.
type Write = (u8, Option<u8>);

/// What the fake does at each call, in order; the history itself never changes.
#[derive(Debug, Clone)]
struct Script {
    /// Every revision's writes, revision `i + 1` at `i` (none: rolled back).
    history: Vec<Vec<Write>>,
    /// Each snapshot in turn: the revision it holds everything up to, and the later ones it
    /// holds too. The last one is used again if the follower loads more often.
    snapshots: Vec<(i64, BTreeSet<i64>)>,
    /// After this many pages, the log is compacted up to this revision.
    compaction: Option<(usize, i64)>,
    /// These calls (counting snapshots and pages together) fail as a database away would.
    unavailable: BTreeSet<usize>,
}

#[derive(Debug, Default)]
struct Calls {
    snapshots: usize,
    pages: usize,
    all: usize,
    compacted: i64,
}

struct FakeLog {
    script: Script,
    calls: Mutex<Calls>,
}

fn object(number: u8, revision: i64, value: Option<u8>) -> StoredObject {
    let now = chrono::Utc::now();
    StoredObject {
        id: Uuid::from_u128(u128::from(number)),
        kind: Kind::Project,
        revision,
        created_at: now,
        updated_at: now,
        body: format!("{{\"value\":{}}}", value.unwrap_or(0)),
    }
}

/// The objects (by number) and their values after applying `revisions`.
fn state_of(history: &[Vec<Write>], revisions: impl Iterator<Item = i64>) -> BTreeMap<Uuid, String> {
    let mut state = BTreeMap::new();
    for revision in revisions {
        for (number, value) in &history[(revision - 1) as usize] {
            let o = object(*number, revision, *value);
            match value {
                Some(_) => state.insert(o.id, o.body),
                None => state.remove(&o.id),
            };
        }
    }
    state
}

/// Of the revisions after `at` that a snapshot might hold, those that can have committed
/// before it while the revisions between were still running: a transaction that writes an
/// object another one holds waits for that one to end, so a revision held early writes
/// nothing that a revision between `at` and it (and not held) writes.
fn committed_early(history: &[Vec<Write>], at: i64, later: BTreeSet<i64>) -> BTreeSet<i64> {
    let writes = |r: i64| -> BTreeSet<u8> { history[(r - 1) as usize].iter().map(|w| w.0).collect() };
    let mut held = BTreeSet::new();
    for r in later.into_iter().filter(|r| *r > at) {
        let running: BTreeSet<u8> = (at + 1..r).filter(|p| !held.contains(p)).flat_map(writes).collect();
        if writes(r).is_disjoint(&running) {
            held.insert(r);
        }
    }
    held
}

fn unavailable() -> StoreError {
    StoreError::Database(sqlx::Error::PoolTimedOut)
}

impl ChangeSource for FakeLog {
    async fn snapshot(
        &self,
        chunk: usize,
        take: &mut (dyn FnMut(Vec<StoredObject>) + Send),
    ) -> Result<(i64, BTreeSet<i64>)> {
        let (revision, included) = {
            let mut calls = self.calls.lock().expect("calls");
            calls.all += 1;
            if self.script.unavailable.contains(&calls.all) {
                return Err(unavailable());
            }
            calls.snapshots += 1;
            let at = (calls.snapshots - 1).min(self.script.snapshots.len() - 1);
            let (revision, later) = self.script.snapshots[at].clone();
            // A snapshot never predates a compaction it saw (the store's does the same).
            let revision = revision.max(calls.compacted);
            (revision, committed_early(&self.script.history, revision, later))
        };
        let held = (1..=revision).chain(included.iter().copied());
        let objects: Vec<StoredObject> = state_of(&self.script.history, held)
            .into_iter()
            .map(|(id, body)| StoredObject { id, body, ..object(0, revision, Some(0)) })
            .collect();
        for part in objects.chunks(chunk.max(1)) {
            take(part.to_vec());
        }
        Ok((revision, included))
    }

    async fn changes_until(&self, since: i64, horizon: i64, max_revisions: i64) -> Result<ChangePage> {
        let mut calls = self.calls.lock().expect("calls");
        calls.all += 1;
        if self.script.unavailable.contains(&calls.all) {
            return Err(unavailable());
        }
        if since < calls.compacted {
            return Err(StoreError::Compacted { requested: since, compacted: calls.compacted });
        }
        calls.pages += 1;
        if let Some((after, up_to)) = self.script.compaction
            && calls.pages == after
        {
            calls.compacted = up_to;
        }
        let up_to = horizon.min(since + max_revisions.max(1)).max(since);
        let mut changes = Vec::new();
        for revision in since + 1..=up_to {
            for (seq, (number, value)) in self.script.history[(revision - 1) as usize].iter().enumerate() {
                changes.push(Change {
                    revision,
                    seq: seq as i32,
                    op: if value.is_some() { ChangeOp::Put } else { ChangeOp::Delete },
                    object: object(*number, revision, *value),
                });
            }
        }
        Ok(ChangePage { changes, up_to, horizon })
    }
}

/// A point where the follower said every revision up to here was given: its state then,
/// what it had been given and the snapshot's later revisions.
type Advance = (i64, BTreeMap<Uuid, String>, BTreeSet<i64>, BTreeSet<i64>);

/// What a follower saw: its state at each `Loaded` and `Advanced`, the revisions it was given since the
/// last reset, and the snapshot's later revisions.
#[derive(Debug, Default)]
struct Seen {
    state: BTreeMap<Uuid, String>,
    given: BTreeSet<i64>,
    included: BTreeSet<i64>,
    resets: usize,
    advanced: Vec<Advance>,
}

impl Seen {
    fn take(&mut self, event: Event<'_>) {
        match event {
            Event::Reset => {
                self.state.clear();
                self.given.clear();
                self.resets += 1;
            }
            Event::Snapshot(objects) => {
                for o in objects {
                    self.state.insert(o.id, o.body);
                }
            }
            Event::Loaded { revision, included } => {
                self.given.extend(1..=revision);
                self.given.extend(included);
                self.included = included.clone();
                self.advanced.push((revision, self.state.clone(), self.given.clone(), self.included.clone()));
            }
            Event::Batch { revision, changes } => {
                assert!(self.given.insert(revision), "revision {revision} given twice");
                assert!(self.given.range(revision + 1..).all(|r| self.included.contains(r)), "out of order");
                for c in changes {
                    assert_eq!(c.revision, revision, "a batch holds one revision");
                    match c.op {
                        ChangeOp::Put => self.state.insert(c.object.id, c.object.body.clone()),
                        ChangeOp::Delete => self.state.remove(&c.object.id),
                    };
                }
            }
            Event::Advanced(revision) => {
                self.advanced.push((revision, self.state.clone(), self.given.clone(), self.included.clone()))
            }
        }
    }
}

/// Runs a follower over `script` until it has caught up; its sink asks for a reload once,
/// after the batch of `reload_at`.
fn run(script: Script, mut reload_at: Option<i64>) -> (Seen, Calls) {
    let last = script.history.len() as i64;
    let log = FakeLog { script, calls: Mutex::new(Calls::default()) };
    let config =
        FollowConfig { chunk: 2, page_revisions: 3, first_backoff: Duration::ZERO, most_backoff: Duration::ZERO };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let mut seen = Seen::default();
    runtime.block_on(async {
        // The horizon stands at the last revision; its sender is gone, so the follower ends
        // once it has caught up.
        let (_, horizon) = watch::channel(last);
        let stop = std::future::pending::<()>();
        follow(
            &log,
            horizon,
            config,
            |e| {
                let reload = matches!(e, Event::Batch { revision, .. } if Some(revision) == reload_at);
                if reload {
                    reload_at = None;
                }
                seen.take(e);
                if reload { Next::Reload } else { Next::Continue }
            },
            stop,
        )
        .await;
    });
    (seen, log.calls.into_inner().expect("calls"))
}

fn history() -> impl Strategy<Value = Vec<Vec<Write>>> {
    prop::collection::vec(prop::collection::vec((0u8..6, prop::option::of(1u8..50)), 0..3), 1..24)
}

/// A snapshot of a history of `n` revisions: up to some revision, with some later ones.
fn snapshot(n: i64) -> impl Strategy<Value = (i64, BTreeSet<i64>)> {
    (0..=n)
        .prop_flat_map(move |at| (Just(at), prop::collection::vec(at + 1..=n.max(at + 1), 0..3)))
        .prop_map(move |(at, later)| (at, later.into_iter().filter(|r| *r <= n).collect()))
}

fn script() -> impl Strategy<Value = Script> {
    history().prop_flat_map(|history| {
        let n = history.len() as i64;
        (
            Just(history),
            prop::collection::vec(snapshot(n), 1..3),
            prop::option::of((1usize..6, 0..=n)),
            prop::collection::vec(1usize..12, 0..3).prop_map(BTreeSet::from_iter),
        )
            .prop_map(|(history, snapshots, compaction, unavailable)| Script {
                history,
                snapshots,
                compaction,
                unavailable,
            })
    })
}

proptest! {
    /// DESIGN.md §1's promise: once the follower says every revision up to r has been given,
    /// every one was given exactly once (in the snapshot or as one batch), and what it built
    /// is the history up to r (once past the snapshot's own later revisions); at the end, the
    /// whole history.
    #[test]
    fn a_follower_never_misses_a_revision_and_never_gives_one_twice(script in script()) {
        let history = script.history.clone();
        let n = history.len() as i64;
        let (seen, _) = run(script, None);
        let (last, state, _, _) = seen.advanced.last().expect("the follower advanced").clone();
        prop_assert_eq!(last, n);
        prop_assert_eq!(state, state_of(&history, 1..=n));
        for (revision, state, given, included) in &seen.advanced {
            let written = |r: &i64| !history[(*r - 1) as usize].is_empty();
            prop_assert!(
                (1..=*revision).filter(written).all(|r| given.contains(&r)),
                "a revision up to {} was missed",
                revision
            );
            if included.iter().all(|r| r <= revision) {
                prop_assert_eq!(state, &state_of(&history, 1..=*revision), "at {}", revision);
            }
        }
    }
}

#[test]
fn a_compaction_past_the_follower_reloads_from_a_snapshot() {
    let history = vec![vec![(1, Some(1))], vec![(2, Some(2))], vec![], vec![(1, None)], vec![(3, Some(3))]];
    let script = Script {
        history: history.clone(),
        snapshots: vec![(0, BTreeSet::new()), (4, BTreeSet::from([5]))],
        // After the first page (revisions 1-3), the log keeps only what follows 4.
        compaction: Some((1, 4)),
        unavailable: BTreeSet::new(),
    };
    let (seen, calls) = run(script, None);
    assert_eq!(seen.resets, 2, "loaded, then reloaded");
    assert_eq!(calls.snapshots, 2);
    assert_eq!(seen.state, state_of(&history, 1..=5));
    assert_eq!(seen.advanced.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 3, 4, 5], "5 came with the second snapshot");
}

#[test]
fn a_database_away_for_a_moment_costs_a_retry_of_the_same_page_not_a_reload() {
    let history = vec![vec![(1, Some(1))]; 7];
    let script = Script {
        history: history.clone(),
        snapshots: vec![(0, BTreeSet::new())],
        compaction: None,
        // The snapshot fails once; then the second page.
        unavailable: BTreeSet::from([1, 4]),
    };
    let (seen, calls) = run(script, None);
    assert_eq!(seen.resets, 2, "a failed snapshot is started again");
    assert_eq!((calls.snapshots, calls.pages), (1, 3), "pages 1-3, 4-6, 7 and no second snapshot");
    assert_eq!(seen.advanced.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 3, 6, 7]);
    assert_eq!(seen.state, state_of(&history, 1..=7));
}

#[test]
fn a_sink_that_cannot_take_a_revision_in_gets_a_snapshot_again() {
    let history = vec![vec![(1, Some(1))], vec![(2, Some(2))], vec![(1, Some(3))], vec![(2, None)]];
    let script = Script {
        history: history.clone(),
        snapshots: vec![(0, BTreeSet::new()), (2, BTreeSet::new())],
        compaction: None,
        unavailable: BTreeSet::new(),
    };
    let (seen, calls) = run(script, Some(2));
    assert_eq!((seen.resets, calls.snapshots), (2, 2), "revision 2 was refused: loaded again");
    assert_eq!(seen.advanced.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 2, 4], "never advanced past the refusal");
    assert_eq!(seen.state, state_of(&history, 1..=4));
}
