//! A read cache of every object, kept current from the change log, so that a GET by id or name
//! costs no database round trip.
//!
//! ```text
//!   start: a consistent snapshot at H0 ────────────────► cache at H0   (weft_store::follow,
//!   follower: changes (H, H'] from the change log ────► cache at H'    woken by the horizon)
//!   GET: cache at >= the last revision this process committed? serve it : ask PostgreSQL
//! ```
//!
//! Reads stay consistent for a client of one API process: a write answered by this process
//! is never followed by a GET that misses it, because GETs go to PostgreSQL until the cache has
//! caught up with this process's last commit. A write made through another API process shows
//! up here within one round of the horizon follower (a few milliseconds); conditional writes
//! (If-Match) are always checked against PostgreSQL, so a stale read can cost a retry, never a
//! lost update.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use uuid::Uuid;
use weft_model::Kind;
use weft_store::follow::{Event, FollowConfig, Next};
use weft_store::{ChangeOp, ObjectKey, Store, StoredObject};

/// (kind, project for project-scoped kinds, name)
type NameKey = (Kind, Option<String>, String);

#[derive(Debug, Clone)]
pub struct CachedObject {
    /// The object as served (`StoredObject::to_json`).
    pub json: String,
    pub revision: i64,
    /// The project that owns it (a project owns itself); `None`: the cluster's.
    pub owner: Option<String>,
}

/// One object as kept: its stored body and server-assigned fields, no more. What is served
/// (the body with those fields, and the owner) is made from it on a GET: kept whole, with its
/// name twice and its owner, an object took 790 bytes here (at 200,000 objects, 151 MiB for
/// 50 MiB of stored text), and a GET costs a format of a few hundred bytes either way.
#[derive(Debug)]
struct Entry {
    kind: Kind,
    revision: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    body: Box<str>,
}

impl Entry {
    fn identity(&self) -> Option<Identity> {
        Identity::of(&self.body).ok()
    }

    /// Its name key, read from its body.
    fn name(&self) -> Option<NameKey> {
        self.identity().map(|i| (self.kind, i.project, i.name))
    }

    fn served(&self, id: Uuid) -> CachedObject {
        // (Only objects with an identity are cached.)
        let owner = self.identity().and_then(|i| i.owner(self.kind));
        CachedObject {
            json: weft_store::served_json(id, self.revision, (self.created_at, self.updated_at), &self.body),
            revision: self.revision,
            owner,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Every revision up to this one is applied; `None` until the first load completes.
    revision: Option<i64>,
    by_id: HashMap<Uuid, Entry>,
    by_name: HashMap<NameKey, Uuid>,
}

/// What the cache knows about a key.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(CachedObject),
    /// Certainly absent at the cache's revision.
    Absent,
    /// Not loaded yet, or behind what the caller needs: ask the database.
    Unknown,
}

#[derive(Debug, Default)]
pub struct ObjectCache {
    state: RwLock<State>,
}

/// What a stored body says of whose it is.
#[derive(serde::Deserialize)]
pub(crate) struct Identity {
    name: String,
    project: Option<String>,
}

impl Identity {
    pub(crate) fn of(body: &str) -> serde_json::Result<Identity> {
        serde_json::from_str(body)
    }

    /// The project that owns an object of `kind` (a project owns itself); `None`: the
    /// cluster's.
    pub(crate) fn owner(self, kind: Kind) -> Option<String> {
        match kind {
            Kind::ClusterPolicy => None,
            _ => Some(self.project.unwrap_or(self.name)),
        }
    }
}

impl ObjectCache {
    /// Looks a key up, if the cache has applied at least `min_revision`.
    pub fn get(&self, kind: Kind, key: &ObjectKey, min_revision: i64) -> Lookup {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        match state.revision {
            Some(r) if r >= min_revision => {}
            _ => return Lookup::Unknown,
        }
        let id = match key {
            ObjectKey::Id(id) => Some(*id),
            ObjectKey::Name { project, name } => state.by_name.get(&(kind, project.clone(), name.clone())).copied(),
        };
        match id.and_then(|id| Some((id, state.by_id.get(&id)?))).filter(|(_, e)| e.kind == kind) {
            Some((id, e)) => Lookup::Found(e.served(id)),
            None => Lookup::Absent,
        }
    }

    pub fn revision(&self) -> Option<i64> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).revision
    }

    /// Applies a put, unless the cache already holds a newer state of the object.
    fn put(state: &mut State, object: &StoredObject) {
        let Ok(identity) = Identity::of(&object.body) else {
            tracing::warn!(id = %object.id, "cannot cache an object without a name");
            return;
        };
        let old = match state.by_id.get(&object.id) {
            Some(e) if e.revision > object.revision => return,
            Some(e) => e.name(),
            None => None,
        };
        // A rename leaves no name behind that points at it.
        if let Some(old) = old
            && state.by_name.get(&old) == Some(&object.id)
        {
            state.by_name.remove(&old);
        }
        state.by_name.insert((object.kind, identity.project, identity.name), object.id);
        let entry = Entry {
            kind: object.kind,
            revision: object.revision,
            created_at: object.created_at,
            updated_at: object.updated_at,
            body: object.body.as_str().into(),
        };
        state.by_id.insert(object.id, entry);
    }

    fn delete(state: &mut State, id: Uuid, revision: i64) {
        if state.by_id.get(&id).is_some_and(|e| e.revision <= revision)
            && let Some(e) = state.by_id.remove(&id)
            && let Some(name) = e.name()
            && state.by_name.get(&name) == Some(&id)
        {
            state.by_name.remove(&name);
        }
    }

    /// Takes one event of the change-log follower ([`weft_store::follow`]). A snapshot is
    /// built off to the side (`loading`) and swapped in whole; until then, and while a reload
    /// is under way, GETs go to PostgreSQL.
    fn take(&self, loading: &mut Option<State>, event: &Event<'_>) {
        match event {
            Event::Reset => {
                self.state.write().unwrap_or_else(|e| e.into_inner()).revision = None;
                *loading = Some(State::default());
            }
            Event::Snapshot(objects) => {
                if let Some(fresh) = loading.as_mut() {
                    for object in objects {
                        Self::put(fresh, object);
                    }
                }
            }
            Event::Loaded { revision, .. } => {
                // (A follower gives Reset before a snapshot's chunks: there is always one.)
                let Some(mut fresh) = loading.take() else { return };
                fresh.revision = Some(*revision);
                tracing::info!(objects = fresh.by_id.len(), revision, "object cache loaded");
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            }
            Event::Batch { changes, .. } => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                for change in *changes {
                    match change.op {
                        ChangeOp::Put => Self::put(&mut state, &change.object),
                        ChangeOp::Delete => Self::delete(&mut state, change.object.id, change.revision),
                    }
                }
            }
            Event::Advanced(revision) => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                if state.revision.is_some() {
                    state.revision = Some(*revision);
                }
            }
        }
    }

    /// What keeps the cache current from a follower's events: the process's one follower (the
    /// compiler's, `weft_control::Follower`) gives it what it reads, so that the database is
    /// read once at start, not once for the compiler and again for the cache.
    pub fn feed(self: &Arc<Self>) -> CacheFeed {
        CacheFeed { cache: Arc::clone(self), loading: None }
    }

    /// Loads the cache, then follows the horizon until every sender of `horizon` is gone: for
    /// a process whose compiler does not feed it ([`ObjectCache::feed`]).
    pub fn spawn_follower(self: &Arc<Self>, store: Store, horizon: watch::Receiver<i64>) {
        let mut feed = self.feed();
        tokio::spawn(async move {
            let sink = |event: Event<'_>| {
                feed.take(&event);
                Next::Continue
            };
            weft_store::follow::follow(&store, horizon, FollowConfig::default(), sink, std::future::pending()).await;
        });
    }
}

/// Feeds an [`ObjectCache`] from a follower's events, holding a snapshot being loaded.
#[derive(Debug)]
pub struct CacheFeed {
    cache: Arc<ObjectCache>,
    loading: Option<State>,
}

impl CacheFeed {
    /// Takes one event of a follower ([`weft_store::follow`]), in the order it gives them.
    pub fn take(&mut self, event: &Event<'_>) {
        self.cache.take(&mut self.loading, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: Uuid, name: &str, revision: i64) -> StoredObject {
        StoredObject {
            id,
            kind: Kind::Project,
            revision,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            body: format!("{{\"name\":\"{name}\"}}"),
        }
    }

    #[test]
    fn never_goes_back_to_an_older_state() {
        let cache = ObjectCache::default();
        let id = Uuid::new_v4();
        let mut state = cache.state.write().unwrap();
        state.revision = Some(20);
        ObjectCache::put(&mut state, &object(id, "a", 12));
        ObjectCache::put(&mut state, &object(id, "a", 11));
        assert_eq!(state.by_id[&id].revision, 12);
        ObjectCache::delete(&mut state, id, 10);
        assert!(state.by_id.contains_key(&id), "an older delete does not remove a newer put");
        ObjectCache::delete(&mut state, id, 13);
        assert!(!state.by_id.contains_key(&id));
        assert!(state.by_name.is_empty());
        drop(state);
        let key = ObjectKey::Name { project: None, name: "a".into() };
        assert!(matches!(cache.get(Kind::Project, &key, 20), Lookup::Absent));
        assert!(matches!(cache.get(Kind::Project, &key, 21), Lookup::Unknown), "behind what the caller needs");
    }

    #[test]
    fn serves_what_the_store_serves_with_its_owner_and_forgets_a_name_given_up() {
        let cache = ObjectCache::default();
        let id = Uuid::new_v4();
        let port = |name: &str, revision| StoredObject {
            kind: Kind::Port,
            body: format!("{{\"name\": \"{name}\", \"project\": \"p1\", \"labels\": {{\"app\": \"x\"}}}}"),
            ..object(id, name, revision)
        };
        let mut state = cache.state.write().unwrap();
        state.revision = Some(5);
        let renamed = port("b", 4);
        ObjectCache::put(&mut state, &port("a", 3));
        ObjectCache::put(&mut state, &renamed);
        drop(state);
        let named = |name: &str| ObjectKey::Name { project: Some("p1".into()), name: name.into() };
        let Lookup::Found(found) = cache.get(Kind::Port, &ObjectKey::Id(id), 5) else { panic!("by id") };
        assert_eq!(found.json, renamed.to_json());
        assert_eq!((found.revision, found.owner.as_deref()), (4, Some("p1")));
        assert!(matches!(cache.get(Kind::Port, &named("b"), 5), Lookup::Found(_)));
        assert!(matches!(cache.get(Kind::Port, &named("a"), 5), Lookup::Absent), "the old name is not served");
        assert!(matches!(cache.get(Kind::SecurityGroup, &ObjectKey::Id(id), 5), Lookup::Absent), "another kind");
    }
}
