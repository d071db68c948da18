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
    pub json: Arc<str>,
    pub revision: i64,
    /// The project that owns it (a project owns itself); `None`: the cluster's.
    pub owner: Option<String>,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    name: NameKey,
    object: CachedObject,
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

#[derive(serde::Deserialize)]
struct Identity {
    name: String,
    project: Option<String>,
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
        match id.and_then(|id| state.by_id.get(&id)).filter(|e| e.kind == kind) {
            Some(e) => Lookup::Found(e.object.clone()),
            None => Lookup::Absent,
        }
    }

    pub fn revision(&self) -> Option<i64> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).revision
    }

    /// Applies a put, unless the cache already holds a newer state of the object.
    fn put(state: &mut State, object: &StoredObject) {
        let Ok(identity) = serde_json::from_str::<Identity>(&object.body) else {
            tracing::warn!(id = %object.id, "cannot cache an object without a name");
            return;
        };
        if state.by_id.get(&object.id).is_some_and(|e| e.object.revision > object.revision) {
            return;
        }
        let owner = match object.kind {
            Kind::ClusterPolicy => None,
            _ => Some(identity.project.clone().unwrap_or_else(|| identity.name.clone())),
        };
        let name: NameKey = (object.kind, identity.project, identity.name);
        state.by_name.insert(name.clone(), object.id);
        let cached = CachedObject { json: object.to_json().into(), revision: object.revision, owner };
        state.by_id.insert(object.id, Entry { kind: object.kind, name, object: cached });
    }

    fn delete(state: &mut State, id: Uuid, revision: i64) {
        if state.by_id.get(&id).is_some_and(|e| e.object.revision <= revision)
            && let Some(e) = state.by_id.remove(&id)
            && state.by_name.get(&e.name) == Some(&id)
        {
            state.by_name.remove(&e.name);
        }
    }

    /// Takes one event of the change-log follower ([`weft_store::follow`]). A snapshot is
    /// built off to the side (`loading`) and swapped in whole; until then, and while a reload
    /// is under way, GETs go to PostgreSQL.
    fn take(&self, loading: &mut Option<State>, event: Event<'_>) -> Next {
        match event {
            Event::Reset => {
                self.state.write().unwrap_or_else(|e| e.into_inner()).revision = None;
                *loading = Some(State::default());
            }
            Event::Snapshot(objects) => {
                if let Some(fresh) = loading.as_mut() {
                    for object in &objects {
                        Self::put(fresh, object);
                    }
                }
            }
            Event::Loaded { revision, .. } => {
                let Some(mut fresh) = loading.take() else { return Next::Reload };
                fresh.revision = Some(revision);
                tracing::info!(objects = fresh.by_id.len(), revision, "object cache loaded");
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            }
            Event::Batch { changes, .. } => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                for change in changes {
                    match change.op {
                        ChangeOp::Put => Self::put(&mut state, &change.object),
                        ChangeOp::Delete => Self::delete(&mut state, change.object.id, change.revision),
                    }
                }
            }
            Event::Advanced(revision) => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                if state.revision.is_some() {
                    state.revision = Some(revision);
                }
            }
        }
        Next::Continue
    }

    /// Loads the cache, then follows the horizon until every sender of `horizon` is gone.
    pub fn spawn_follower(self: &Arc<Self>, store: Store, horizon: watch::Receiver<i64>) {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut loading = None;
            let sink = |event: Event<'_>| cache.take(&mut loading, event);
            weft_store::follow::follow(&store, horizon, FollowConfig::default(), sink, std::future::pending()).await;
        });
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
        assert_eq!(state.by_id[&id].object.revision, 12);
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
}
