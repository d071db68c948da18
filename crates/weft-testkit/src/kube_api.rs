//! A fake Kubernetes API server for what cannot run here (no kube-apiserver on these machines).
//! It speaks the real protocol for the parts kube-manager uses, so kube-rs's client, watcher
//! and event recorder run against it unchanged:
//!
//! - objects in memory under one global resourceVersion, as JSON;
//! - LIST, with `limit`/`continue` chunks served from a snapshot (an unknown continue token is
//!   410 Expired, as after a compaction);
//! - WATCH as newline-delimited JSON events: ADDED/MODIFIED/DELETED replayed from history after
//!   `resourceVersion=N`, then live; BOOKMARK events when asked for; an ERROR event with 410
//!   Expired when N is older than the last [`FakeKube::compact`];
//! - GET, POST (409 AlreadyExists), PUT (409 Conflict on a stale resourceVersion), PATCH (JSON
//!   merge patch) and DELETE of single objects — what a Lease and an Event need.
//!
//! Tests drive the cluster through [`FakeKube::apply`] and [`FakeKube::delete`] (what a user's
//! `kubectl` would do), and can break every open watch ([`FakeKube::end_watches`], as an API
//! server restart does) and compact history to force a relist.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

/// What the fake serves: (path prefix, plural, kind, namespaced).
const RESOURCES: &[(&str, &str, &str, bool)] = &[
    ("api/v1", "namespaces", "Namespace", false),
    ("api/v1", "pods", "Pod", true),
    ("api/v1", "nodes", "Node", false),
    ("api/v1", "events", "Event", true),
    ("apis/networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", true),
    ("apis/policy.networking.k8s.io/v1alpha2", "clusternetworkpolicies", "ClusterNetworkPolicy", false),
    ("apis/coordination.k8s.io/v1", "leases", "Lease", true),
    ("apis/events.k8s.io/v1", "events", "Event", true),
];

/// A resource type: `api/v1/pods`, `apis/networking.k8s.io/v1/networkpolicies`.
type ResourcePath = String;
/// An object's namespace ("" for cluster-scoped objects) and name.
type ObjectKey = (String, String);

#[derive(Debug, Clone)]
struct Change {
    revision: u64,
    resource: ResourcePath,
    namespace: String,
    kind: &'static str,
    object: Arc<Value>,
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    /// Shared with history and lists' snapshots: a list of 150,000 pods copies pointers.
    objects: BTreeMap<ResourcePath, BTreeMap<ObjectKey, Arc<Value>>>,
    history: Vec<Change>,
    /// Watches from a resourceVersion older than this get 410 Expired.
    compacted: u64,
    /// The rest of chunked lists, by continue token: (revision, items).
    continues: HashMap<String, (u64, Vec<Arc<Value>>)>,
    next_token: u64,
    lists: HashMap<ResourcePath, usize>,
    watches: HashMap<ResourcePath, usize>,
    /// Every (API group, resource, verb) a client called, in RBAC's terms.
    calls: std::collections::BTreeSet<(String, String, &'static str)>,
    /// Resource types answered 404, as a cluster without their CRD answers.
    hidden: std::collections::BTreeSet<ResourcePath>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch.
    generation: watch::Sender<u64>,
    /// While true, requests wait (the server is down).
    down: watch::Sender<bool>,
    bookmark_interval: Mutex<Duration>,
}

/// The fake API server; clones share one cluster.
#[derive(Debug, Clone)]
pub struct FakeKube {
    shared: Arc<Shared>,
}

impl Default for FakeKube {
    fn default() -> Self {
        Self::new()
    }
}

fn resource_of<K: kube::Resource<DynamicType = ()>>() -> ResourcePath {
    let group = K::group(&());
    let prefix =
        if group.is_empty() { format!("api/{}", K::version(&())) } else { format!("apis/{}", K::api_version(&())) };
    format!("{prefix}/{}", K::plural(&()))
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16()})
}

fn failure(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    (code, axum::Json(status(code, reason, message))).into_response()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// See [`FakeKube::outage`].
#[derive(Debug)]
pub struct Outage<'a> {
    fake: &'a FakeKube,
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        self.fake.shared.down.send_replace(false);
    }
}

impl State {
    fn key_of(object: &Value) -> ObjectKey {
        let m = &object["metadata"];
        (m["namespace"].as_str().unwrap_or("").to_string(), m["name"].as_str().unwrap_or("").to_string())
    }

    /// Stores `object` under a new resourceVersion and records the change.
    fn write(&mut self, shared: &Shared, resource: &str, kind: &'static str, mut object: Value) -> Value {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let key = Self::key_of(&object);
        let stored = Arc::new(object);
        self.objects.entry(resource.to_string()).or_default().insert(key.clone(), Arc::clone(&stored));
        self.record(shared, resource, key.0, kind, Arc::clone(&stored));
        Arc::unwrap_or_clone(stored)
    }

    fn remove(&mut self, shared: &Shared, resource: &str, key: &ObjectKey) -> Option<Value> {
        let mut object = Arc::unwrap_or_clone(self.objects.get_mut(resource)?.remove(key)?);
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.record(shared, resource, key.0.clone(), "DELETED", Arc::new(object.clone()));
        Some(object)
    }

    fn record(&mut self, shared: &Shared, resource: &str, namespace: String, kind: &'static str, object: Arc<Value>) {
        let change = Change { revision: self.revision, resource: resource.to_string(), namespace, kind, object };
        self.history.push(change.clone());
        // Sent under the lock, so watchers see changes in revision order; no receiver is fine.
        let _ = shared.changes.send(change);
    }
}

impl FakeKube {
    pub fn new() -> FakeKube {
        let (changes, _) = broadcast::channel(1 << 16);
        let (generation, _) = watch::channel(0);
        let (down, _) = watch::channel(false);
        FakeKube {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                changes,
                generation,
                down,
                bookmark_interval: Mutex::new(Duration::from_millis(500)),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often an idle watch that asked for bookmarks gets one.
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.shared.bookmark_interval.lock().unwrap_or_else(|e| e.into_inner()) = every;
    }

    /// The HTTP API, as a tower service (`kube::Client::new(fake.router(), "default")`).
    pub fn router(&self) -> Router {
        let fake = self.clone();
        Router::new().fallback(move |query: Query<HashMap<String, String>>, request: Request| {
            let fake = fake.clone();
            async move { fake.handle(query.0, request).await }
        })
    }

    /// A kube-rs client talking to this fake in process.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serves the API over plain HTTP on a loopback port until the returned task is aborted.
    pub async fn serve(&self) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok((addr, task))
    }

    /// A kubeconfig naming a server at `addr`, for processes (`--kubeconfig`).
    pub fn kubeconfig(addr: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             users:\n- name: fake\n  user: {{}}\n"
        )
    }

    /// Creates or replaces an object, as `kubectl apply` would; its new resourceVersion.
    pub fn apply<K>(&self, object: &K) -> u64
    where
        K: kube::Resource<DynamicType = ()> + Serialize,
    {
        self.apply_json::<K>(serde_json::to_value(object).expect("a Kubernetes object serializes"))
    }

    /// Serves resources of type `K` no more: 404, as a cluster without their CRD answers.
    pub fn hide<K: kube::Resource<DynamicType = ()>>(&self) {
        self.state().hidden.insert(resource_of::<K>());
    }

    /// [`FakeKube::apply`] for an object written as JSON (a type with no Rust model).
    pub fn apply_json<K>(&self, mut value: Value) -> u64
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let resource = resource_of::<K>();
        value["apiVersion"] = json!(K::api_version(&()));
        value["kind"] = json!(K::kind(&()));
        let mut state = self.state();
        let key = State::key_of(&value);
        let existing = state.objects.get(&resource).and_then(|o| o.get(&key)).cloned();
        let kind = match existing {
            Some(old) => {
                value["metadata"]["uid"] = old["metadata"]["uid"].clone();
                value["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                "MODIFIED"
            }
            None => {
                value["metadata"]["uid"] = json!(format!("uid-{}", state.revision + 1));
                value["metadata"]["creationTimestamp"] = json!(now());
                "ADDED"
            }
        };
        let written = state.write(&self.shared, &resource, kind, value);
        written["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or_default()
    }

    /// Deletes an object; whether it was there.
    pub fn delete<K: kube::Resource<DynamicType = ()>>(&self, namespace: Option<&str>, name: &str) -> bool {
        let key = (namespace.unwrap_or("").to_string(), name.to_string());
        self.state().remove(&self.shared, &resource_of::<K>(), &key).is_some()
    }

    /// The objects of one type, as the server holds them.
    pub fn list<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(&self) -> Vec<K> {
        let state = self.state();
        let objects = state.objects.get(&resource_of::<K>());
        objects.into_iter().flat_map(|o| o.values()).filter_map(|v| K::deserialize(&**v).ok()).collect()
    }

    /// The current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    /// Forgets history up to now, as etcd's compaction does: a watch from an older
    /// resourceVersion gets 410 Expired and must list again.
    pub fn compact(&self) {
        let mut state = self.state();
        state.compacted = state.revision;
        state.history.clear();
        state.continues.clear();
    }

    /// Ends every open watch, as an API server restart does.
    pub fn end_watches(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// The API server goes down until the guard is dropped: open watches end at once (no
    /// event after this call reaches them) and requests wait. Changes made meanwhile reach a
    /// watcher from history when it comes back, or, after a [`FakeKube::compact`], only by
    /// listing again.
    pub fn outage(&self) -> Outage<'_> {
        self.shared.down.send_replace(true);
        self.end_watches();
        Outage { fake: self }
    }

    /// How many LIST requests a resource type got.
    pub fn lists<K: kube::Resource<DynamicType = ()>>(&self) -> usize {
        self.state().lists.get(&resource_of::<K>()).copied().unwrap_or(0)
    }

    /// Every call clients made, as RBAC names them: (API group, resource, verb).
    pub fn calls(&self) -> std::collections::BTreeSet<(String, String, &'static str)> {
        self.state().calls.clone()
    }

    /// How many WATCH requests a resource type got.
    pub fn watches<K: kube::Resource<DynamicType = ()>>(&self) -> usize {
        self.state().watches.get(&resource_of::<K>()).copied().unwrap_or(0)
    }

    async fn handle(&self, query: HashMap<String, String>, request: Request) -> Response {
        let _ = self.shared.down.subscribe().wait_for(|down| !*down).await;
        let method = request.method().clone();
        let path = request.uri().path().trim_matches('/').to_string();
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
            Ok(b) => b,
            Err(e) => return failure(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        let segments: Vec<&str> = path.split('/').collect();
        let (prefix, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (format!("api/{version}"), rest),
            ["apis", group, version, rest @ ..] => (format!("apis/{group}/{version}"), rest),
            _ => return failure(StatusCode::NOT_FOUND, "NotFound", format!("no route {path}")),
        };
        // `.../<name>/status`: the status subresource (a merge patch of `status` alone).
        let (rest, subresource) = match rest {
            [head @ .., "status"] if head.len() == 2 || head.len() == 4 => (head, Some("status")),
            _ => (rest, None),
        };
        let (namespace, plural, name) = match rest {
            [plural] => (None, *plural, None),
            [plural, name] => (None, *plural, Some(*name)),
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            _ => return failure(StatusCode::NOT_FOUND, "NotFound", format!("no route {path}")),
        };
        let Some(&(_, _, kind, namespaced)) = RESOURCES.iter().find(|(p, r, ..)| *p == prefix && *r == plural) else {
            return failure(StatusCode::NOT_FOUND, "NotFound", format!("the fake does not serve {prefix}/{plural}"));
        };
        let resource = format!("{prefix}/{plural}");
        if self.state().hidden.contains(&resource) {
            return failure(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find {resource}"));
        }
        let api_version = prefix.trim_start_matches("api/").trim_start_matches("apis/").to_string();
        let key = |name: &str| (namespace.unwrap_or("").to_string(), name.to_string());
        if namespaced && name.is_some() && namespace.is_none() {
            return failure(StatusCode::NOT_FOUND, "NotFound", "a namespaced object needs its namespace");
        }
        for unsupported in ["labelSelector", "fieldSelector"] {
            if query.get(unsupported).is_some_and(|s| !s.is_empty()) {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("the fake does not filter by {unsupported}"),
                );
            }
        }
        let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        let verb = match (&method, name) {
            (&Method::GET, None) if watching => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "unknown",
        };
        let group = prefix.strip_prefix("apis/").and_then(|g| g.split('/').next()).unwrap_or("").to_string();
        let rbac_resource = match subresource {
            Some(sub) => format!("{plural}/{sub}"),
            None => plural.to_string(),
        };
        self.state().calls.insert((group, rbac_resource, verb));
        if subresource.is_some() {
            let Some(name) = name.filter(|_| method == Method::PATCH) else {
                return failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} {path}"));
            };
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return failure(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
            };
            let mut state = self.state();
            let Some(mut object) =
                state.objects.get(&resource).and_then(|o| o.get(&key(name))).map(|v| Value::clone(v))
            else {
                return failure(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found"));
            };
            // Only the status changes through the subresource, as the API server has it.
            let mut status = object.get("status").cloned().unwrap_or(json!({}));
            weft_model::merge_patch(&mut status, &patch["status"]);
            object["status"] = status;
            return axum::Json(state.write(&self.shared, &resource, "MODIFIED", object)).into_response();
        }
        match (method, name) {
            (Method::GET, None) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
                self.watch(&resource, (&api_version, kind), namespace, &query)
            }
            (Method::GET, None) => self.list_page(&resource, kind, &api_version, namespace, &query),
            (Method::GET, Some(name)) => match self.state().objects.get(&resource).and_then(|o| o.get(&key(name))) {
                Some(object) => axum::Json(object.clone()).into_response(),
                None => failure(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found")),
            },
            (Method::POST, None) => {
                let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                    return failure(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
                };
                if let Some(ns) = namespace {
                    object["metadata"]["namespace"] = json!(ns);
                }
                let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
                    return failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value");
                };
                let mut state = self.state();
                if state.objects.get(&resource).is_some_and(|o| o.contains_key(&key(&name))) {
                    return failure(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{plural} \"{name}\" already exists"),
                    );
                }
                object["metadata"]["uid"] = json!(format!("uid-{}", state.revision + 1));
                object["metadata"]["creationTimestamp"] = json!(now());
                let written = state.write(&self.shared, &resource, "ADDED", object);
                (StatusCode::CREATED, axum::Json(written)).into_response()
            }
            (Method::PUT, Some(name)) => {
                let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                    return failure(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
                };
                let mut state = self.state();
                let Some(old) = state.objects.get(&resource).and_then(|o| o.get(&key(name))).map(|v| Value::clone(v))
                else {
                    return failure(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found"));
                };
                let given = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !given.is_empty() && given != old["metadata"]["resourceVersion"].as_str().unwrap_or("") {
                    return failure(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified"),
                    );
                }
                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                axum::Json(state.write(&self.shared, &resource, "MODIFIED", object)).into_response()
            }
            (Method::PATCH, Some(name)) => {
                if !content_type.starts_with("application/merge-patch+json") {
                    return failure(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", content_type);
                }
                let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                    return failure(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
                };
                let mut state = self.state();
                let Some(mut object) =
                    state.objects.get(&resource).and_then(|o| o.get(&key(name))).map(|v| Value::clone(v))
                else {
                    return failure(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found"));
                };
                weft_model::merge_patch(&mut object, &patch);
                axum::Json(state.write(&self.shared, &resource, "MODIFIED", object)).into_response()
            }
            (Method::DELETE, Some(name)) => match self.state().remove(&self.shared, &resource, &key(name)) {
                Some(object) => axum::Json(object).into_response(),
                None => failure(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found")),
            },
            (method, _) => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} {path}")),
        }
    }

    fn list_page(
        &self,
        resource: &str,
        kind: &str,
        api_version: &str,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> Response {
        let mut state = self.state();
        *state.lists.entry(resource.to_string()).or_default() += 1;
        let (revision, mut items) = match query.get("continue").filter(|t| !t.is_empty()) {
            Some(token) => match state.continues.remove(token) {
                Some(rest) => rest,
                None => {
                    return failure(StatusCode::GONE, "Expired", "the provided continue parameter is too old");
                }
            },
            None => {
                let objects = state.objects.get(resource);
                let items = objects
                    .into_iter()
                    .flat_map(|o| o.iter())
                    .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                    .map(|(_, v)| Arc::clone(v))
                    .collect();
                (state.revision, items)
            }
        };
        let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(limit) = limit.filter(|l| *l < items.len()) {
            let rest = items.split_off(limit);
            state.next_token += 1;
            let token = format!("{revision}-{}", state.next_token);
            metadata["continue"] = json!(token);
            metadata["remainingItemCount"] = json!(rest.len());
            state.continues.insert(token, (revision, rest));
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct List<'a> {
            kind: String,
            api_version: &'a str,
            metadata: Value,
            items: Vec<&'a Value>,
        }
        let items = items.iter().map(|v| &**v).collect();
        axum::Json(List { kind: format!("{kind}List"), api_version, metadata, items }).into_response()
    }

    fn watch(
        &self,
        resource: &str,
        (api_version, kind): (&str, &'static str),
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> Response {
        let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs);
        let from = query.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0);
        let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
        let matches = {
            let resource = resource.to_string();
            let namespace = namespace.map(str::to_string);
            move |c: &Change| c.resource == resource && namespace.as_ref().is_none_or(|n| *n == c.namespace)
        };
        let line = |kind: &str, object: &Value| {
            let mut text = json!({"type": kind, "object": object}).to_string();
            text.push('\n');
            Ok(Bytes::from(text))
        };
        let mut first: Vec<Result<Bytes, Infallible>> = Vec::new();
        let mut generation = self.shared.generation.subscribe();
        let started = *generation.borrow_and_update();
        let (mut live, start) = {
            let mut state = self.state();
            *state.watches.entry(resource.to_string()).or_default() += 1;
            match from {
                Some(rv) if rv < state.compacted => {
                    let message = format!("too old resource version: {rv} ({})", state.compacted);
                    first.push(line("ERROR", &status(StatusCode::GONE, "Expired", message)));
                    (None, rv)
                }
                Some(rv) => {
                    first.extend(
                        state.history.iter().filter(|c| c.revision > rv && matches(c)).map(|c| line(c.kind, &c.object)),
                    );
                    (Some(self.shared.changes.subscribe()), state.revision)
                }
                None => {
                    let objects = state.objects.get(resource);
                    let current = objects.into_iter().flat_map(|o| o.iter());
                    first.extend(
                        current.filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns)).map(|(_, v)| line("ADDED", v)),
                    );
                    (Some(self.shared.changes.subscribe()), state.revision)
                }
            }
        };
        let interval = *self.shared.bookmark_interval.lock().unwrap_or_else(|e| e.into_inner());
        // A bookmark names the type and carries only a resourceVersion.
        let mark = json!({"kind": kind, "apiVersion": api_version, "metadata": {}});
        tokio::spawn(async move {
            for l in first {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            let Some(live) = live.as_mut() else { return };
            let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
            tokio::pin!(deadline);
            let mut seen = start;
            loop {
                tokio::select! {
                    change = live.recv() => match change {
                        // Ended by end_watches before this change was made.
                        Ok(_) if *generation.borrow() != started => return,
                        Ok(c) => {
                            seen = c.revision;
                            if matches(&c) && tx.send(line(c.kind, &c.object)).await.is_err() {
                                return;
                            }
                        }
                        // A watcher too slow for the fake is cut off, as a real server does.
                        Err(_) => return,
                    },
                    _ = tokio::time::sleep(interval), if bookmarks => {
                        let mut mark = mark.clone();
                        mark["metadata"]["resourceVersion"] = json!(seen.to_string());
                        if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                            return;
                        }
                    }
                    _ = generation.changed() => return,
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
    }
}
