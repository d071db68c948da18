//! Reads and writes of objects. A [`Txn`] is one API request (or one batch): every write in it
//! is validated and checked against what is stored, and `commit` gives it one revision.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;
use weft_model::{
    Kind, LabelSelector, ObjectRef, Operator, Port, Remote, Resource, SecurityGroup, ValidationErrors, VirtualNetwork,
};

use crate::error::{ConflictKind, Result, StoreError};
use crate::ipam;
use crate::{ObjectKey, Store, StoredObject};

/// Columns every object read selects, in the order [`from_row`] expects.
macro_rules! object_columns {
    () => {
        "id, kind, project_id, revision, created_at, updated_at, body::text AS body"
    };
}

/// What the insert of [`Txn::insert_all`] gives back per object written: the revision, its
/// id and project, the addresses it claimed and got, and whether it got its interface.
type InsertedRow = (i64, Uuid, Option<Uuid>, Vec<ipnet::IpNet>, bool);

/// A create of [`Txn::create_all`] that failed: its position among them, and why.
#[derive(Debug)]
pub struct CreateFailed {
    pub index: usize,
    pub error: StoreError,
}

impl CreateFailed {
    fn at(index: usize) -> impl Fn(StoreError) -> CreateFailed {
        move |error| CreateFailed { index, error }
    }
}

/// An object row with its owning project, as read inside a transaction.
#[derive(Debug, Clone)]
pub(crate) struct ObjectRow {
    pub(crate) object: StoredObject,
    pub(crate) project_id: Option<Uuid>,
}

fn from_row(row: &sqlx::postgres::PgRow) -> Result<ObjectRow> {
    let kind: String = row.try_get("kind")?;
    let kind = Kind::from_name(&kind)
        .ok_or_else(|| StoreError::Database(sqlx::Error::Decode(format!("unknown object kind {kind:?}").into())))?;
    Ok(ObjectRow {
        object: StoredObject {
            id: row.try_get("id")?,
            kind,
            revision: row.try_get("revision")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            body: row.try_get("body")?,
        },
        project_id: row.try_get("project_id")?,
    })
}

/// One write transaction. Dropping it without `commit` rolls everything back.
///
/// Each write statement appends its own change-log rows in the same statement (a data-modifying
/// CTE), and the first one takes the transaction's revision (`COALESCE($revision,
/// nextval('revisions'))`): a create is one statement between BEGIN and COMMIT.
#[derive(Debug)]
pub struct Txn {
    store: Store,
    tx: sqlx::Transaction<'static, Postgres>,
    /// Taken by the first write.
    revision: Option<i64>,
    /// The next change-log row's position within the revision.
    seq: i32,
    /// The row this transaction locked last, until it writes: the API reads an object for
    /// authorization and then replaces or deletes it, and the second lookup needs no query.
    locked: Option<(Kind, ObjectKey, ObjectRow)>,
    /// Taken once per transaction: every write in it has the same timestamp, as it has the
    /// same revision.
    now: DateTime<Utc>,
    /// What this transaction has looked up, so that a batch of thousands of ports on one
    /// network asks once, not per port.
    known: Known,
}

/// What a transaction has read and may read again without asking: ids of objects found by
/// name, the networks it holds locked, and IPAM's state of those networks (no other
/// transaction allocates on a network while this one holds its row). Forgotten whole at
/// every replace and delete, which may change what a name leads to or what a network says;
/// creates only add names. There are no savepoints: a failed statement ends the transaction,
/// so nothing here can outlive what it was read from.
#[derive(Debug, Default)]
struct Known {
    /// By (kind, scope, name), only found ones.
    ids: HashMap<(Kind, Uuid, String), Uuid>,
    /// Whether a network is shared, by id.
    shared: HashMap<Uuid, bool>,
    /// Networks locked (`FOR NO KEY UPDATE`) by this transaction, as read then.
    locked_networks: HashMap<Uuid, Arc<VirtualNetwork>>,
    ipam: ipam::Known,
}

impl Store {
    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Txn> {
        // PostgreSQL keeps microseconds: round here so that what a write returns equals what a read gives.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        Ok(Txn {
            store: self.clone(),
            tx: self.pool.begin().await?,
            revision: None,
            seq: 0,
            locked: None,
            now,
            known: Known::default(),
        })
    }

    /// Reads one object.
    pub async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<StoredObject>> {
        let row = match key {
            ObjectKey::Id(id) => {
                sqlx::query(concat!("SELECT ", object_columns!(), " FROM objects WHERE id = $1 AND kind = $2"))
                    .bind(id)
                    .bind(kind.as_str())
                    .fetch_optional(&self.pool)
                    .await?
            }
            ObjectKey::Name { project, name } => {
                sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE kind = $1 AND name = $2 AND scope = \
                     CASE WHEN $3::text IS NULL THEN '00000000-0000-0000-0000-000000000000'::uuid \
                     ELSE (SELECT id FROM objects WHERE kind = 'project' AND scope = \
                     '00000000-0000-0000-0000-000000000000' AND name = $3) END"
                ))
                .bind(kind.as_str())
                .bind(name)
                .bind(project.as_deref())
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.map(|r| from_row(&r).map(|o| o.object)).transpose()
    }

    /// Lists objects of one kind in (project, name) order, a page at a time. A caller that needs
    /// the revision a page reflects reads [`Store::safe_horizon`] first: every revision up to it
    /// is in the page (later ones may be too; replaying them from a watch is harmless).
    pub async fn list(&self, kind: Kind, query: &ListQuery) -> Result<ListPage> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let mut q = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            object_columns!(),
            ", scope, name FROM objects o WHERE kind = "
        ));
        q.push_bind(kind.as_str());
        if let Some(project) = &query.project {
            if kind == Kind::ClusterPolicy {
                // Cluster policies belong to no project.
                q.push(" AND false");
            } else if kind == Kind::Project {
                q.push(" AND name = ").push_bind(project.clone());
            } else {
                q.push(" AND scope = (SELECT id FROM objects WHERE kind = 'project' AND scope = ")
                    .push_bind(Uuid::nil())
                    .push(" AND name = ")
                    .push_bind(project.clone())
                    .push(")");
            }
        }
        if let Some(allowed) = &query.allowed_projects {
            if kind == Kind::ClusterPolicy {
                q.push(" AND false");
            } else if kind == Kind::Project {
                q.push(" AND name = ANY(").push_bind(allowed.clone()).push(")");
            } else {
                q.push(" AND project_id IN (SELECT id FROM objects WHERE kind = 'project' AND name = ANY(")
                    .push_bind(allowed.clone())
                    .push("))");
            }
        }
        if let Some(name) = &query.name {
            q.push(" AND name = ").push_bind(name.clone());
        }
        if let Some(selector) = &query.selector {
            push_selector(&mut q, selector);
        }
        if let Some(token) = &query.continue_after {
            let (scope, name) = decode_continue(token)?;
            q.push(" AND (scope, name) > (").push_bind(scope).push(", ").push_bind(name).push(")");
        }
        q.push(" ORDER BY scope, name LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last = None;
        for row in rows.iter().take(limit as usize) {
            items.push(from_row(row)?.object);
            last = Some((row.try_get::<Uuid, _>("scope")?, row.try_get::<String, _>("name")?));
        }
        let continue_token = if more { last.map(|(scope, name)| encode_continue(scope, &name)) } else { None };
        Ok(ListPage { items, continue_token })
    }
}

/// A cluster policy's place among the others: its status's ties are computed from these.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyPlace {
    pub id: Uuid,
    pub name: String,
    pub tier: String,
    pub priority: i64,
}

/// Every cluster policy's place, in name order. Cluster policies are few (a cluster's
/// administrators write them), so every response that reports ties reads them all.
const POLICY_PLACES: &str = "SELECT id, name, body->>'tier' AS tier, (body->>'priority')::bigint AS priority \
     FROM objects WHERE kind = 'cluster-policy' ORDER BY name";

impl Store {
    /// Every cluster policy's place ([`PolicyPlace`]).
    pub async fn cluster_policy_places(&self) -> Result<Vec<PolicyPlace>> {
        Ok(sqlx::query_as(POLICY_PLACES).fetch_all(&self.pool).await?)
    }
}

impl Txn {
    /// Every cluster policy's place as this transaction sees it: with its own writes.
    pub async fn cluster_policy_places(&mut self) -> Result<Vec<PolicyPlace>> {
        Ok(sqlx::query_as(POLICY_PLACES).fetch_all(&mut *self.tx).await?)
    }
}

/// The largest page a list returns, whatever `limit` asks.
pub const MAX_PAGE: u32 = 1000;

/// What a list asks for.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only objects of this project (for projects: only this project).
    pub project: Option<String>,
    pub selector: Option<LabelSelector>,
    pub name: Option<String>,
    /// Only objects of these projects: what the caller may read. `None`: everything.
    pub allowed_projects: Option<Vec<String>>,
    pub limit: u32,
    /// The `continue` token of the previous page.
    pub continue_after: Option<String>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            project: None,
            selector: None,
            name: None,
            allowed_projects: None,
            limit: 500,
            continue_after: None,
        }
    }
}

#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<StoredObject>,
    /// Present when more objects follow; pass it back as `continue`.
    pub continue_token: Option<String>,
}

fn encode_continue(scope: Uuid, name: &str) -> String {
    hex::encode(format!("{scope}/{name}"))
}

fn decode_continue(token: &str) -> Result<(Uuid, String)> {
    let bad = || StoreError::invalid("/continue", "not a continue token returned by a previous page");
    let text = hex::decode(token).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
    let (scope, name) = text.split_once('/').ok_or_else(bad)?;
    Ok((scope.parse().map_err(|_| bad())?, name.to_string()))
}

/// Translates a label selector into conditions on the `labels` column (GIN-indexed for `@>`).
fn push_selector(q: &mut QueryBuilder<Postgres>, selector: &LabelSelector) {
    if !selector.match_labels.is_empty() {
        let json = serde_json::to_value(&selector.match_labels).unwrap_or_default();
        q.push(" AND labels @> ").push_bind(json);
    }
    for r in &selector.match_expressions {
        match r.operator {
            Operator::In => {
                q.push(" AND labels->>").push_bind(r.key.clone()).push(" = ANY(").push_bind(r.values.clone()).push(")");
            }
            Operator::NotIn => {
                q.push(" AND (NOT labels ? ")
                    .push_bind(r.key.clone())
                    .push(" OR labels->>")
                    .push_bind(r.key.clone())
                    .push(" <> ALL(")
                    .push_bind(r.values.clone())
                    .push("))");
            }
            Operator::Exists => {
                q.push(" AND labels ? ").push_bind(r.key.clone());
            }
            Operator::DoesNotExist => {
                q.push(" AND NOT labels ? ").push_bind(r.key.clone());
            }
        }
    }
}

impl Txn {
    /// Creates an object.
    pub async fn create(&mut self, resource: Resource) -> Result<StoredObject> {
        let created = self.create_all(vec![resource]).await.map_err(|f| f.error)?;
        created.into_iter().next().ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Creates objects, each checked as [`Txn::create`] checks one, in a few statements
    /// whatever their number: kube-manager's batches are thousands of ports, and a statement
    /// or more per object made its sync of 150,000 pods take minutes. What one of them refers
    /// to must exist before, except the groups a group's rules name; the first that fails is
    /// named by its position.
    pub async fn create_all(
        &mut self,
        mut resources: Vec<Resource>,
    ) -> std::result::Result<Vec<StoredObject>, CreateFailed> {
        if resources.is_empty() {
            return Ok(Vec::new());
        }
        for (i, resource) in resources.iter_mut().enumerate() {
            resource.validate().map_err(|e| CreateFailed::at(i)(StoreError::Invalid(e)))?;
            resource.clear_meta();
            match resource {
                Resource::Project(_) | Resource::VirtualNetwork(_) | Resource::ClusterPolicy(_) => {}
                Resource::SecurityGroup(sg) => assign_rule_ids(sg),
                Resource::Port(port) => {
                    if port.security_groups.is_none() {
                        port.security_groups = Some(vec![weft_model::DEFAULT_GROUP.to_string()]);
                    }
                }
            }
        }
        // A port on a network has its addresses before its row is written.
        let networked: Vec<(Kind, Uuid, String)> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Port(port) if port.network.is_some() => {
                    Some((Kind::Project, Uuid::nil(), port.project.clone()))
                }
                _ => None,
            })
            .collect();
        self.prefetch(networked).await.map_err(CreateFailed::at(0))?;
        // Addresses ports name go to them, even to those written after the others' allocations.
        self.known.ipam.taken(
            resources
                .iter()
                .flat_map(|r| match r {
                    Resource::Port(port) => port.ips.as_slice(),
                    _ => &[],
                })
                .copied(),
        );
        self.prefetch_allocations(&resources).await.map_err(CreateFailed::at(0))?;
        for (i, resource) in resources.iter_mut().enumerate() {
            if let Resource::Port(port) = resource
                && port.network.is_some()
            {
                let project_id = self.require_project(&port.project).await.map_err(CreateFailed::at(i))?;
                self.prepare_port_addresses(project_id, port, None).await.map_err(CreateFailed::at(i))?;
            }
        }
        let ids: Vec<Uuid> = resources.iter().map(|_| Uuid::new_v4()).collect();
        let (objects, project_ids) = self.insert_all(&ids, &resources).await?;
        let written: Vec<(Uuid, Option<Uuid>, &Resource)> =
            ids.iter().zip(&project_ids).zip(&resources).map(|((id, p), r)| (*id, *p, r)).collect();
        self.write_refs(&written, false).await?;
        self.hold_port_addresses(&written).await?;
        // Each project comes with its default group.
        let (projects, groups): (Vec<usize>, Vec<Resource>) = resources
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Resource::Project(p) => Some((i, Resource::SecurityGroup(SecurityGroup::default_for(&p.name)))),
                _ => None,
            })
            .unzip();
        if !groups.is_empty() {
            Box::pin(self.create_all(groups))
                .await
                .map_err(|f| CreateFailed { index: projects.get(f.index).copied().unwrap_or(0), error: f.error })?;
        }
        Ok(objects)
    }

    /// Replaces an object's body. The name and project cannot change.
    pub async fn replace(
        &mut self,
        kind: Kind,
        key: &ObjectKey,
        mut resource: Resource,
        if_match: Option<i64>,
    ) -> Result<StoredObject> {
        self.forget().await?;
        let current = self.lock(kind, key).await?;
        check_if_match(&current.object, if_match)?;
        if resource.kind() != kind {
            return Err(StoreError::invalid("", format!("expected a {kind}, got a {}", resource.kind())));
        }
        let old = current.object.decode()?;
        let mut immutable = ValidationErrors::default();
        if old.name() != resource.name() {
            immutable.errors.push(weft_model::FieldError {
                pointer: "/name".into(),
                detail: format!("a name cannot change (it is {:?})", old.name()),
            });
        }
        if old.project() != resource.project() {
            immutable.errors.push(weft_model::FieldError {
                pointer: "/project".into(),
                detail: format!("an object cannot move to another project (it is in {:?})", old.project()),
            });
        }
        if !immutable.is_empty() {
            return Err(StoreError::Invalid(immutable));
        }
        resource.validate().map_err(StoreError::Invalid)?;
        resource.clear_meta();
        let id = current.object.id;
        match (&mut resource, &old) {
            (Resource::SecurityGroup(sg), _) => assign_rule_ids(sg),
            (Resource::VirtualNetwork(vn), _) => self.check_network_holds_allocations(id, vn).await?,
            (Resource::Port(port), Resource::Port(old)) => {
                if port.security_groups.is_none() {
                    port.security_groups = Some(vec![weft_model::DEFAULT_GROUP.to_string()]);
                }
                sqlx::query("DELETE FROM ip_allocations WHERE port_id = $1").bind(id).execute(&mut *self.tx).await?;
                if let Some(project_id) = current.project_id {
                    self.prepare_port_addresses(project_id, port, Some(old)).await?;
                }
            }
            _ => {}
        }
        let body = body_of(&resource);
        let revision: i64 = sqlx::query_scalar(
            "WITH r AS (SELECT COALESCE($1::bigint, nextval('revisions')) AS revision), \
             o AS (UPDATE objects SET labels = $3, body = $4::json, updated_at = $5, revision = (SELECT revision FROM r) \
                   WHERE id = $2 RETURNING kind, created_at), \
             c AS (INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) \
                   SELECT r.revision, $6, o.kind, $2, 'put', $4::json, o.created_at, $5 FROM r, o) \
             SELECT revision FROM r",
        )
        .bind(self.revision)
        .bind(id)
        .bind(labels_json(&resource))
        .bind(&body)
        .bind(self.now)
        .bind(self.next_seq(1))
        .fetch_one(&mut *self.tx)
        .await?;
        self.revision = Some(revision);
        let written = [(id, current.project_id, &resource)];
        self.write_refs(&written, true).await.map_err(|f| f.error)?;
        self.hold_port_addresses(&written).await.map_err(|f| f.error)?;
        if let Resource::Port(port) = &resource {
            self.claim(id, port).await?;
        }
        Ok(StoredObject { id, kind, revision, created_at: current.object.created_at, updated_at: self.now, body })
    }

    /// Reads an object and locks it until the transaction ends (for read-modify-write).
    pub async fn get_for_update(&mut self, kind: Kind, key: &ObjectKey) -> Result<StoredObject> {
        Ok(self.lock(kind, key).await?.object)
    }

    /// Deletes an object. A project or network with children needs `cascade`; an object that
    /// others still reference cannot be deleted.
    pub async fn delete(&mut self, kind: Kind, key: &ObjectKey, cascade: bool, if_match: Option<i64>) -> Result<()> {
        self.forget().await?;
        let current = self.lock(kind, key).await?;
        check_if_match(&current.object, if_match)?;
        let id = current.object.id;
        let dependents: Vec<Uuid> = match kind {
            Kind::Project => {
                let children: Vec<(Uuid, String, String)> =
                    sqlx::query_as("SELECT id, kind, name FROM objects WHERE project_id = $1 ORDER BY kind, name")
                        .bind(id)
                        .fetch_all(&mut *self.tx)
                        .await?;
                let real: Vec<String> = children
                    .iter()
                    .filter(|(_, k, n)| !(k == "security-group" && n == weft_model::DEFAULT_GROUP))
                    .map(|(_, k, n)| format!("{k} {n}"))
                    .collect();
                if !real.is_empty() && !cascade {
                    return Err(StoreError::conflict(
                        ConflictKind::HasChildren,
                        format!(
                            "project still has {} object(s) ({}); delete them first or use cascade=true",
                            real.len(),
                            summarize(&real)
                        ),
                    ));
                }
                children.into_iter().map(|(id, _, _)| id).collect()
            }
            Kind::VirtualNetwork => {
                let ports: Vec<(Uuid, String)> = sqlx::query_as(
                    "SELECT o.id, o.name FROM refs r JOIN objects o ON o.id = r.from_id \
                     WHERE r.to_id = $1 AND o.kind = 'port' ORDER BY o.name",
                )
                .bind(id)
                .fetch_all(&mut *self.tx)
                .await?;
                if !ports.is_empty() && !cascade {
                    let names: Vec<String> = ports.iter().map(|(_, n)| format!("port {n}")).collect();
                    return Err(StoreError::conflict(
                        ConflictKind::HasChildren,
                        format!(
                            "network still has {} port(s) ({}); delete them first or use cascade=true",
                            ports.len(),
                            summarize(&names)
                        ),
                    ));
                }
                ports.into_iter().map(|(id, _)| id).collect()
            }
            Kind::SecurityGroup | Kind::Port | Kind::ClusterPolicy => Vec::new(),
        };
        let mut doomed = dependents.clone();
        doomed.push(id);
        let referrers: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT DISTINCT o.kind, o.name, p.name FROM refs r JOIN objects o ON o.id = r.from_id \
             LEFT JOIN objects p ON p.id = o.project_id \
             WHERE r.to_id = ANY($1) AND NOT r.from_id = ANY($1) ORDER BY 1, 3, 2 LIMIT 6",
        )
        .bind(&doomed)
        .fetch_all(&mut *self.tx)
        .await?;
        if !referrers.is_empty() {
            let names: Vec<String> = referrers
                .iter()
                .map(|(k, n, p)| match p {
                    Some(p) => format!("{k} {p}/{n}"),
                    None => format!("{k} {n}"),
                })
                .collect();
            return Err(StoreError::conflict(
                ConflictKind::InUse,
                format!("{kind} {key} is still referenced by {}", summarize(&names)),
            ));
        }
        if !dependents.is_empty() {
            // Remove the dependents' references and addresses first: PostgreSQL may check a
            // foreign key to a doomed object before it runs the cascade that frees it.
            sqlx::query("DELETE FROM refs WHERE from_id = ANY($1)").bind(&dependents).execute(&mut *self.tx).await?;
            sqlx::query("DELETE FROM ip_allocations WHERE port_id = ANY($1)")
                .bind(&dependents)
                .execute(&mut *self.tx)
                .await?;
            self.delete_rows(&dependents, &format!("{kind} {key}")).await?;
        }
        self.delete_rows(&[id], &format!("{kind} {key}")).await?;
        Ok(())
    }

    /// Deletes objects and records their last state in the change log, ports first.
    async fn delete_rows(&mut self, ids: &[Uuid], what: &str) -> Result<()> {
        let seq = self.seq;
        let (revision, deleted): (i64, i64) = sqlx::query_as(
            "WITH r AS (SELECT COALESCE($1::bigint, nextval('revisions')) AS revision), \
             d AS (DELETE FROM objects WHERE id = ANY($2) RETURNING id, kind, body, created_at, updated_at), \
             c AS (INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) \
                   SELECT r.revision, $3 + (row_number() OVER (ORDER BY d.kind <> 'port', d.id))::int - 1, \
                          d.kind, d.id, 'delete', d.body, d.created_at, d.updated_at FROM r, d) \
             SELECT r.revision, (SELECT count(*) FROM d) FROM r",
        )
        .bind(self.revision)
        .bind(ids)
        .bind(seq)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| StoreError::from_db(e, || what.to_string()))?;
        self.revision = Some(revision);
        self.next_seq(deleted as i32);
        Ok(())
    }

    /// Reserves `n` change-log positions and returns the first.
    fn next_seq(&mut self, n: i32) -> i32 {
        // Every write statement reserves positions: what was locked may have changed.
        self.locked = None;
        let first = self.seq;
        self.seq += n;
        first
    }

    /// Commits, and returns the transaction's revision; one that wrote nothing has none (0).
    pub async fn commit(mut self) -> Result<i64> {
        self.known.ipam.write(&mut self.tx).await?;
        self.tx.commit().await?;
        let revision = self.revision.unwrap_or(0);
        if revision > 0 {
            self.store.committed(revision);
        }
        Ok(revision)
    }

    /// Forgets what the transaction knew ([`Known`]), having written what it had not yet.
    async fn forget(&mut self) -> Result<()> {
        self.known.ipam.write(&mut self.tx).await?;
        self.known = Known::default();
        Ok(())
    }

    async fn lock(&mut self, kind: Kind, key: &ObjectKey) -> Result<ObjectRow> {
        if let Some((k, locked_key, row)) = &self.locked
            && *k == kind
            && (locked_key == key || *key == ObjectKey::Id(row.object.id))
        {
            return Ok(row.clone());
        }
        let row = self.lock_query(kind, key).await?;
        self.locked = Some((kind, key.clone(), row.clone()));
        Ok(row)
    }

    async fn lock_query(&mut self, kind: Kind, key: &ObjectKey) -> Result<ObjectRow> {
        let row = match key {
            ObjectKey::Id(id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE id = $1 AND kind = $2 FOR UPDATE"
                ))
                .bind(id)
                .bind(kind.as_str())
                .fetch_optional(&mut *self.tx)
                .await?
            }
            ObjectKey::Name { project, name } => {
                let scope = match project {
                    Some(p) => match self.project_id(p).await? {
                        Some(id) => id,
                        None => return Err(StoreError::NotFound { kind, key: key.to_string() }),
                    },
                    None => Uuid::nil(),
                };
                sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE kind = $1 AND scope = $2 AND name = $3 FOR UPDATE"
                ))
                .bind(kind.as_str())
                .bind(scope)
                .bind(name)
                .fetch_optional(&mut *self.tx)
                .await?
            }
        };
        match row {
            Some(row) => from_row(&row),
            None => Err(StoreError::NotFound { kind, key: key.to_string() }),
        }
    }

    /// Inserts objects, their change-log rows and ports' claims in one statement. Each
    /// object's project is looked up by name in the same statement: an object that comes
    /// back without a row either names no project or has a taken name.
    async fn insert_all(
        &mut self,
        ids: &[Uuid],
        resources: &[Resource],
    ) -> std::result::Result<(Vec<StoredObject>, Vec<Option<Uuid>>), CreateFailed> {
        let bodies: Vec<String> = resources.iter().map(body_of).collect();
        let labels: Vec<String> = resources.iter().map(|r| labels_json(r).to_string()).collect();
        let first_seq = self.seq;
        let seqs: Vec<i32> = (0..resources.len()).map(|i| first_seq + i as i32).collect();
        // A port's claims (migrations/0003_port_claims.sql) go in with it: a port created on
        // its own is one round trip, as before claims existed (a bulk load of 100,000 pods
        // took a third longer with a statement of their own).
        let (mut claimed, mut claimants) = (Vec::new(), Vec::new());
        let (mut nodes, mut interfaces, mut bound_ports) = (Vec::new(), Vec::new(), Vec::new());
        for (id, resource) in ids.iter().zip(resources) {
            if let Resource::Port(port) = resource {
                for ip in &port.ips {
                    claimed.push(ipnet::IpNet::from(*ip));
                    claimants.push(*id);
                }
                if let Some(node) = &port.node {
                    nodes.push(node.clone());
                    interfaces.push(port.effective_interface());
                    bound_ports.push(*id);
                }
            }
        }
        let rows: Vec<InsertedRow> = sqlx::query_as(
            "WITH r AS (SELECT COALESCE($1::bigint, nextval('revisions')) AS revision), \
             i AS (SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int4[]) \
                   AS i(id, kind, project, name, labels, body, seq)), \
             p AS (SELECT i.id, p.id AS project_id FROM i LEFT JOIN LATERAL (SELECT id FROM objects \
                   WHERE kind = 'project' AND scope = '00000000-0000-0000-0000-000000000000' AND name = i.project \
                   LIMIT 1) p ON true WHERE i.project IS NULL OR p.id IS NOT NULL), \
             o AS (INSERT INTO objects (id, kind, project_id, scope, name, labels, body, revision, created_at, updated_at) \
                   SELECT i.id, i.kind, p.project_id, COALESCE(p.project_id, '00000000-0000-0000-0000-000000000000'), \
                          i.name, i.labels::jsonb, i.body::json, r.revision, $9, $9 FROM r, i JOIN p USING (id) \
                   ON CONFLICT DO NOTHING RETURNING id, project_id), \
             c AS (INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) \
                   SELECT r.revision, i.seq, i.kind, i.id, 'put', i.body::json, $9, $9 FROM r, i JOIN o USING (id)), \
             a AS (INSERT INTO port_addresses (address, port_id) \
                   SELECT x.address, x.port_id FROM unnest($10::inet[], $11::uuid[]) AS x(address, port_id) \
                   JOIN o ON o.id = x.port_id ON CONFLICT DO NOTHING RETURNING address, port_id), \
             f AS (INSERT INTO port_interfaces (node, interface, port_id) \
                   SELECT x.node, x.interface, x.port_id FROM unnest($12::text[], $13::text[], $14::uuid[]) \
                   AS x(node, interface, port_id) JOIN o ON o.id = x.port_id ON CONFLICT DO NOTHING RETURNING port_id) \
             SELECT r.revision, o.id, o.project_id, COALESCE(h.held, ARRAY[]::inet[]), f.port_id IS NOT NULL \
             FROM r, o LEFT JOIN (SELECT port_id, array_agg(address) AS held FROM a GROUP BY port_id) h \
                  ON h.port_id = o.id \
             LEFT JOIN f ON f.port_id = o.id",
        )
        .bind(self.revision)
        .bind(ids)
        .bind(resources.iter().map(|r| r.kind().as_str()).collect::<Vec<_>>())
        .bind(resources.iter().map(|r| r.project()).collect::<Vec<_>>())
        .bind(resources.iter().map(|r| r.name()).collect::<Vec<_>>())
        .bind(&labels)
        .bind(&bodies)
        .bind(&seqs)
        .bind(self.now)
        .bind(&claimed)
        .bind(&claimants)
        .bind(&nodes)
        .bind(&interfaces)
        .bind(&bound_ports)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(|e| CreateFailed::at(0)(StoreError::from_db(e, || describe(&resources[0]))))?;
        let revision = rows.first().map(|r| r.0);
        let written: HashMap<Uuid, (Option<Uuid>, Vec<ipnet::IpNet>, bool)> =
            rows.into_iter().map(|(_, id, project, held, bound)| (id, (project, held, bound))).collect();
        let mut objects = Vec::with_capacity(resources.len());
        let mut project_ids = Vec::with_capacity(resources.len());
        for (i, ((id, resource), body)) in ids.iter().zip(resources).zip(bodies).enumerate() {
            let (Some(revision), Some((project_id, held, bound))) = (revision, written.get(id)) else {
                let error = match resource.project() {
                    Some(project) if self.project_id(project).await.map_err(CreateFailed::at(i))?.is_none() => {
                        StoreError::invalid("/project", format!("project {project:?} does not exist"))
                    }
                    _ => {
                        StoreError::conflict(ConflictKind::Duplicate, format!("{} already exists", describe(resource)))
                    }
                };
                return Err(CreateFailed::at(i)(error));
            };
            if let Resource::Port(port) = resource {
                check_claims(port, held, *bound || port.node.is_none()).map_err(CreateFailed::at(i))?;
            }
            objects.push(StoredObject {
                id: *id,
                kind: resource.kind(),
                revision,
                created_at: self.now,
                updated_at: self.now,
                body,
            });
            project_ids.push(*project_id);
        }
        self.revision = revision.or(self.revision);
        self.next_seq(resources.len() as i32);
        Ok((objects, project_ids))
    }

    async fn project_id(&mut self, name: &str) -> Result<Option<Uuid>> {
        self.lookup(Kind::Project, Uuid::nil(), name).await
    }

    async fn require_project(&mut self, name: &str) -> Result<Uuid> {
        self.project_id(name)
            .await?
            .ok_or_else(|| StoreError::invalid("/project", format!("project {name:?} does not exist")))
    }

    async fn lookup(&mut self, kind: Kind, scope: Uuid, name: &str) -> Result<Option<Uuid>> {
        let key = (kind, scope, name.to_string());
        if let Some(id) = self.known.ids.get(&key) {
            return Ok(Some(*id));
        }
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM objects WHERE kind = $1 AND scope = $2 AND name = $3")
                .bind(kind.as_str())
                .bind(scope)
                .bind(name)
                .fetch_optional(&mut *self.tx)
                .await?;
        if let Some(id) = id {
            self.known.ids.insert(key, id);
        }
        Ok(id)
    }

    /// Resolves `name` or `project/name` to an object id, or an invalid-field error at `pointer`.
    async fn resolve(
        &mut self,
        kind: Kind,
        own_project: Uuid,
        own_project_name: &str,
        reference: &str,
        pointer: &str,
    ) -> Result<Uuid> {
        let r = ObjectRef::parse(reference).map_err(|e| StoreError::invalid(pointer, e))?;
        let scope = match r.project {
            Some(p) if p != own_project_name => self
                .project_id(p)
                .await?
                .ok_or_else(|| StoreError::invalid(pointer, format!("project {p:?} does not exist")))?,
            _ => own_project,
        };
        self.lookup(kind, scope, r.name)
            .await?
            .ok_or_else(|| StoreError::invalid(pointer, format!("{kind} {reference:?} does not exist")))
    }

    /// A port's network: `name` in its own project, or `project/name`, which must be shared.
    /// Whether another project or its network exists is none of the port's writer's business:
    /// every failure of a reference into another project reads the same.
    async fn resolve_network(&mut self, project_id: Uuid, project: &str, reference: &str) -> Result<Uuid> {
        let foreign = ObjectRef::parse(reference).is_ok_and(|r| r.project.is_some_and(|p| p != project));
        let not_shared = || StoreError::invalid("/network", format!("{reference:?} is no shared network"));
        let id = match self.resolve(Kind::VirtualNetwork, project_id, project, reference, "/network").await {
            Err(StoreError::Invalid(_)) if foreign => return Err(not_shared()),
            other => other?,
        };
        if foreign {
            let shared = match self.known.shared.get(&id) {
                Some(shared) => *shared,
                None => {
                    let shared: Option<bool> =
                        sqlx::query_scalar("SELECT (body->>'shared')::boolean FROM objects WHERE id = $1")
                            .bind(id)
                            .fetch_one(&mut *self.tx)
                            .await?;
                    let shared = shared == Some(true);
                    self.known.shared.insert(id, shared);
                    shared
                }
            };
            if !shared {
                return Err(not_shared());
            }
        }
        Ok(id)
    }

    /// Finds the ids of objects in one query, for lookups to come ([`Known`]): what is not
    /// found is looked up again, one by one, by whoever needs it (and then fails).
    async fn prefetch(&mut self, mut wanted: Vec<(Kind, Uuid, String)>) -> Result<()> {
        wanted.retain(|key| !self.known.ids.contains_key(key));
        wanted.sort();
        wanted.dedup();
        if wanted.len() < 2 {
            // One lookup is one query either way, and nothing needs it yet.
            return Ok(());
        }
        let kinds: Vec<&str> = wanted.iter().map(|(k, _, _)| k.as_str()).collect();
        let scopes: Vec<Uuid> = wanted.iter().map(|(_, s, _)| *s).collect();
        let names: Vec<&str> = wanted.iter().map(|(_, _, n)| n.as_str()).collect();
        let found: Vec<(String, Uuid, String, Uuid)> = sqlx::query_as(
            "SELECT k.kind, k.scope, k.name, o.id FROM unnest($1::text[], $2::uuid[], $3::text[]) AS k(kind, scope, name), \
             LATERAL (SELECT id FROM objects WHERE kind = k.kind AND scope = k.scope AND name = k.name LIMIT 1) o",
        )
        .bind(&kinds)
        .bind(&scopes)
        .bind(&names)
        .fetch_all(&mut *self.tx)
        .await?;
        for (kind, scope, name, id) in found {
            if let Some(kind) = Kind::from_name(&kind) {
                self.known.ids.insert((kind, scope, name), id);
            }
        }
        Ok(())
    }

    /// What an object refers to, as keys for [`Txn::prefetch`]: those in its own project,
    /// and those in projects this transaction knows already.
    fn references(&self, project_id: Uuid, resource: &Resource, into: &mut Vec<(Kind, Uuid, String)>) {
        let project = resource.project().unwrap_or_default();
        for (kind, reference, _) in held_references(resource) {
            let Ok(r) = ObjectRef::parse(reference) else { continue };
            let scope = match r.project {
                Some(p) if p != project => match self.known.ids.get(&(Kind::Project, Uuid::nil(), p.to_string())) {
                    Some(id) => *id,
                    None => continue,
                },
                _ => project_id,
            };
            into.push((kind, scope, r.name.to_string()));
        }
    }

    /// Writes the references objects hold (to networks and security groups); `replace`
    /// (of one object) rewrites them.
    async fn write_refs(
        &mut self,
        objects: &[(Uuid, Option<Uuid>, &Resource)],
        replace: bool,
    ) -> std::result::Result<(), CreateFailed> {
        let mut wanted = Vec::new();
        for (_, project_id, resource) in objects {
            if let Some(project_id) = project_id {
                self.references(*project_id, resource, &mut wanted);
            }
        }
        self.prefetch(wanted).await.map_err(CreateFailed::at(0))?;
        let (mut from, mut to) = (Vec::new(), Vec::new());
        for (i, (id, project_id, resource)) in objects.iter().enumerate() {
            let (Some(project_id), Some(project)) = (*project_id, resource.project()) else {
                continue;
            };
            let mut targets = BTreeSet::new();
            for (kind, reference, field) in held_references(resource) {
                let target = match kind {
                    Kind::VirtualNetwork => self.resolve_network(project_id, project, reference).await,
                    _ => self.resolve(kind, project_id, project, reference, &field).await,
                };
                targets.insert(target.map_err(CreateFailed::at(i))?);
            }
            from.extend(std::iter::repeat_n(*id, targets.len()));
            to.extend(targets);
        }
        let ids: Vec<Uuid> = objects.iter().map(|(id, _, _)| *id).collect();
        let query = if replace {
            // The deleted and the inserted keys are disjoint, so one statement can do both.
            sqlx::query(
                "WITH gone AS (DELETE FROM refs WHERE from_id = ANY($3) AND NOT to_id = ANY($2)) \
                 INSERT INTO refs (from_id, to_id) SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
            )
            .bind(&from)
            .bind(&to)
            .bind(&ids)
        } else if to.is_empty() {
            return Ok(());
        } else {
            sqlx::query("INSERT INTO refs (from_id, to_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])")
                .bind(&from)
                .bind(&to)
        };
        query
            .execute(&mut *self.tx)
            .await
            .map_err(|e| CreateFailed::at(0)(StoreError::from_db(e, || describe(objects[0].2))))?;
        Ok(())
    }

    /// A network's row, locked until the transaction ends: allocations on it are serialised.
    async fn lock_network(&mut self, network_id: Uuid) -> Result<Arc<VirtualNetwork>> {
        if let Some(vn) = self.known.locked_networks.get(&network_id) {
            return Ok(Arc::clone(vn));
        }
        let body: String = sqlx::query_scalar("SELECT body::text FROM objects WHERE id = $1 FOR NO KEY UPDATE")
            .bind(network_id)
            .fetch_one(&mut *self.tx)
            .await?;
        let vn: Arc<VirtualNetwork> =
            Arc::new(serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { id: network_id, source })?);
        self.known.locked_networks.insert(network_id, Arc::clone(&vn));
        Ok(vn)
    }

    /// Reads at once what the allocations of ports to come will need on networks split into
    /// node blocks ([`ipam::prefetch`]). What cannot be resolved here is left to each port,
    /// which then fails with its own error.
    async fn prefetch_allocations(&mut self, resources: &[Resource]) -> Result<()> {
        let mut nodes: HashMap<(&str, &str), Vec<String>> = HashMap::new();
        for resource in resources {
            if let Resource::Port(port) = resource
                && let (Some(network), Some(node), true) = (&port.network, &port.node, port.ips.is_empty())
            {
                nodes.entry((port.project.as_str(), network.as_str())).or_default().push(node.clone());
            }
        }
        let mut by_network: HashMap<Uuid, (Arc<VirtualNetwork>, Vec<String>)> = HashMap::new();
        for ((project, network), nodes) in nodes {
            let Some(project_id) = self.project_id(project).await? else { continue };
            let Ok(network_id) = self.resolve_network(project_id, project, network).await else { continue };
            let vn = self.lock_network(network_id).await?;
            if vn.node_blocks.is_some() {
                by_network.entry(network_id).or_insert_with(|| (vn, Vec::new())).1.extend(nodes);
            }
        }
        let grace = self.store.address_reuse_grace;
        for (network_id, (vn, mut nodes)) in by_network {
            nodes.sort();
            nodes.dedup();
            ipam::prefetch(&mut self.tx, &mut self.known.ipam, network_id, &vn, nodes, grace).await?;
        }
        Ok(())
    }

    /// Fills in a port's addresses from its network before the port row is written: checks the
    /// addresses it names, or allocates one per family of the network's subnets. The network
    /// row stays locked until commit, which serialises allocations on one network.
    async fn prepare_port_addresses(&mut self, project_id: Uuid, port: &mut Port, old: Option<&Port>) -> Result<()> {
        let Some(network) = port.network.clone() else {
            return Ok(());
        };
        let project = port.project.clone();
        let network_id = self.resolve_network(project_id, &project, &network).await?;
        let vn = self.lock_network(network_id).await?;
        // A port keeps its addresses across writes, unless it moves to another node of a
        // network whose addresses are per node (they would be routed to the old one).
        if port.ips.is_empty()
            && let Some(old) = old.filter(|o| {
                o.network.as_deref() == Some(network.as_str()) && (vn.node_blocks.is_none() || o.node == port.node)
            })
        {
            port.ips = old.ips.clone();
        }
        if port.ips.is_empty() {
            let grace = self.store.address_reuse_grace;
            port.ips = ipam::allocate(&mut self.tx, &mut self.known.ipam, network_id, &vn, port.node.as_deref(), grace)
                .await?;
        } else {
            for (i, ip) in port.ips.iter().enumerate() {
                if !vn.subnets.iter().any(|s| s.cidr.contains(ip)) {
                    return Err(StoreError::invalid(
                        &format!("/ips/{i}"),
                        format!("{ip} is not in any subnet of network {network:?}"),
                    ));
                }
                if vn.subnets.iter().any(|s| s.gateway == Some(*ip)) {
                    return Err(StoreError::invalid(
                        &format!("/ips/{i}"),
                        format!("{ip} is the gateway of its subnet"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Records ports' addresses as held on their networks, once the ports' rows exist.
    async fn hold_port_addresses(
        &mut self,
        objects: &[(Uuid, Option<Uuid>, &Resource)],
    ) -> std::result::Result<(), CreateFailed> {
        let (mut networks, mut addresses, mut ports) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (id, project_id, resource)) in objects.iter().enumerate() {
            let (Resource::Port(port), Some(project_id)) = (resource, project_id) else { continue };
            let Some(network) = &port.network else { continue };
            let network_id =
                self.resolve_network(*project_id, &port.project, network).await.map_err(CreateFailed::at(i))?;
            for ip in &port.ips {
                networks.push(network_id);
                addresses.push(ipnet::IpNet::from(*ip));
                ports.push(*id);
            }
        }
        if ports.is_empty() {
            return Ok(());
        }
        let held: std::collections::HashSet<(Uuid, IpAddr)> = sqlx::query_as(
            "INSERT INTO ip_allocations (network_id, address, port_id) \
             SELECT * FROM unnest($1::uuid[], $2::inet[], $3::uuid[]) \
             ON CONFLICT DO NOTHING RETURNING port_id, address",
        )
        .bind(&networks)
        .bind(&addresses)
        .bind(&ports)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(|e| CreateFailed::at(0)(e.into()))?
        .into_iter()
        .map(|(port, address): (Uuid, ipnet::IpNet)| (port, address.addr()))
        .collect();
        for (i, (id, _, resource)) in objects.iter().enumerate() {
            let Resource::Port(port) = resource else { continue };
            let Some(network) = &port.network else { continue };
            if let Some(taken) = port.ips.iter().find(|ip| !held.contains(&(*id, **ip))) {
                return Err(CreateFailed::at(i)(StoreError::conflict(
                    ConflictKind::AddressInUse,
                    format!("address {taken} on network {network:?} is already held by another port"),
                )));
            }
        }
        Ok(())
    }

    /// Records what a port claims on the datapath — its addresses, whatever its network, and
    /// its interface on its node — giving up what it no longer claims, and refuses a claim
    /// another port holds (migrations/0003_port_claims.sql).
    async fn claim(&mut self, port_id: Uuid, port: &Port) -> Result<()> {
        let addresses: Vec<ipnet::IpNet> = port.ips.iter().map(|ip| ipnet::IpNet::from(*ip)).collect();
        let interface = port.node.as_ref().map(|_| port.effective_interface());
        // The deletes and the inserts touch disjoint rows; a claim the port already holds is
        // "updated" to itself, so that it comes back as held.
        let (held, bound): (Vec<ipnet::IpNet>, bool) = sqlx::query_as(
            "WITH gone_a AS (DELETE FROM port_addresses WHERE port_id = $1 AND NOT address = ANY($2::inet[])), \
             gone_i AS (DELETE FROM port_interfaces WHERE port_id = $1 \
                        AND (node, interface) IS DISTINCT FROM ($3::text, $4::text)), \
             a AS (INSERT INTO port_addresses (address, port_id) SELECT unnest($2::inet[]), $1 \
                   ON CONFLICT (address) DO UPDATE SET port_id = EXCLUDED.port_id \
                   WHERE port_addresses.port_id = EXCLUDED.port_id RETURNING address), \
             i AS (INSERT INTO port_interfaces (node, interface, port_id) SELECT $3, $4, $1 WHERE $3 IS NOT NULL \
                   ON CONFLICT (node, interface) DO UPDATE SET port_id = EXCLUDED.port_id \
                   WHERE port_interfaces.port_id = EXCLUDED.port_id RETURNING 1) \
             SELECT ARRAY(SELECT address FROM a), $3 IS NULL OR EXISTS (SELECT 1 FROM i)",
        )
        .bind(port_id)
        .bind(&addresses)
        .bind(port.node.as_deref())
        .bind(interface.as_deref())
        .fetch_one(&mut *self.tx)
        .await?;
        check_claims(port, &held, bound)
    }

    /// A network's new subnets must still contain every address its ports hold.
    async fn check_network_holds_allocations(&mut self, network_id: Uuid, vn: &VirtualNetwork) -> Result<()> {
        let held: Vec<(ipnet::IpNet, String)> = sqlx::query_as(
            "SELECT a.address, o.name FROM ip_allocations a JOIN objects o ON o.id = a.port_id WHERE a.network_id = $1",
        )
        .bind(network_id)
        .fetch_all(&mut *self.tx)
        .await?;
        for (address, port) in held {
            let ip = address.addr();
            if !vn.subnets.iter().any(|s| s.cidr.contains(&ip)) {
                return Err(StoreError::conflict(
                    ConflictKind::InUse,
                    format!("port {port:?} holds {ip}, which the new subnets no longer contain"),
                ));
            }
            if vn.subnets.iter().any(|s| s.gateway == Some(ip)) {
                return Err(StoreError::conflict(
                    ConflictKind::InUse,
                    format!("port {port:?} holds {ip}, which the new subnets make a gateway"),
                ));
            }
        }
        if !vn.shared {
            let outsider: Option<(String, String)> = sqlx::query_as(
                "SELECT p.name, o.name FROM refs r JOIN objects o ON o.id = r.from_id \
                 JOIN objects n ON n.id = r.to_id JOIN objects p ON p.id = o.project_id \
                 WHERE r.to_id = $1 AND o.project_id IS DISTINCT FROM n.project_id LIMIT 1",
            )
            .bind(network_id)
            .fetch_optional(&mut *self.tx)
            .await?;
            if let Some((project, port)) = outsider {
                return Err(StoreError::conflict(
                    ConflictKind::InUse,
                    format!("port {project}/{port} of another project uses the network: it must stay shared"),
                ));
            }
        }
        Ok(())
    }
}

/// What an object refers to and holds (references keep the target from being deleted): the
/// kind, the reference as written, and the field's pointer. Another project's group named by
/// a rule is neither checked nor held: whether it exists is none of this project's business,
/// and a rule of this project must not keep the other from deleting it (issue 17); the
/// compiler matches nothing while it does not exist.
fn held_references(resource: &Resource) -> Vec<(Kind, &str, String)> {
    let project = resource.project().unwrap_or_default();
    let mut held = Vec::new();
    match resource {
        Resource::SecurityGroup(sg) => {
            for (r, rule) in sg.rules.iter().enumerate() {
                if let Remote::SecurityGroup { security_group } = &rule.remote
                    && !ObjectRef::parse(security_group).is_ok_and(|r| r.project.is_some_and(|p| p != project))
                {
                    held.push((
                        Kind::SecurityGroup,
                        security_group.as_str(),
                        format!("/rules/{r}/remote/security_group"),
                    ));
                }
            }
        }
        Resource::Port(port) => {
            if let Some(network) = &port.network {
                held.push((Kind::VirtualNetwork, network.as_str(), "/network".to_string()));
            }
            for (g, group) in port.security_groups.iter().flatten().enumerate() {
                held.push((Kind::SecurityGroup, group.as_str(), format!("/security_groups/{g}")));
            }
        }
        Resource::Project(_) | Resource::VirtualNetwork(_) | Resource::ClusterPolicy(_) => {}
    }
    held
}

/// Whether a port got what it claims: every address (`held`) and its interface (`bound`).
fn check_claims(port: &Port, held: &[ipnet::IpNet], bound: bool) -> Result<()> {
    if let Some(taken) = port.ips.iter().find(|ip| !held.iter().any(|h| h.addr() == **ip)) {
        return Err(StoreError::conflict(
            ConflictKind::AddressInUse,
            format!(
                "address {taken} is already held by another port (an address belongs to one port across every network)"
            ),
        ));
    }
    if !bound {
        let node = port.node.as_deref().unwrap_or_default();
        return Err(StoreError::conflict(
            ConflictKind::InterfaceInUse,
            format!("interface {} on node {node} is already another port's", port.effective_interface()),
        ));
    }
    Ok(())
}

/// Gives new rules an id; rules sent back with their id keep it.
fn assign_rule_ids(sg: &mut SecurityGroup) {
    for rule in &mut sg.rules {
        if rule.id.is_none() {
            rule.id = Some(Uuid::new_v4());
        }
    }
}

fn check_if_match(object: &StoredObject, if_match: Option<i64>) -> Result<()> {
    match if_match {
        Some(expected) if expected != object.revision => {
            Err(StoreError::PreconditionFailed { expected, current: object.revision })
        }
        _ => Ok(()),
    }
}

fn body_of(resource: &Resource) -> String {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_string(resource).unwrap_or_else(|_| "{}".to_string())
}

fn labels_json(resource: &Resource) -> serde_json::Value {
    serde_json::to_value(resource.labels()).unwrap_or_default()
}

fn describe(resource: &Resource) -> String {
    match resource.project() {
        Some(p) => format!("{} {p}/{}", resource.kind(), resource.name()),
        None => format!("{} {}", resource.kind(), resource.name()),
    }
}

/// The first few names of a list, for an error message.
fn summarize(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

impl Store {
    /// Gives the ports written before migration 0003 their interface claims (the derived name
    /// is a hash SQL does not compute). Cheap once done: one anti-join that finds nothing.
    /// Returns the ports that could not claim theirs because another port holds it: their
    /// agents refuse the interface (and say so) until one of the two changes.
    pub async fn claim_interfaces(&self) -> Result<Vec<(String, String)>> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            // The ports without a claim first (ids only), then their bodies: parsing every
            // port's body at every start cost seconds at 100,000 ports. OFFSET 0 keeps the
            // planner from pushing the body's test below the anti-join.
            "SELECT id, body FROM (SELECT id, body::text AS body, created_at FROM objects o WHERE kind = 'port' \
             AND NOT EXISTS (SELECT 1 FROM port_interfaces i WHERE i.port_id = o.id) OFFSET 0) unclaimed \
             WHERE body::json ->> 'node' IS NOT NULL ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut refused = Vec::new();
        for (id, body) in rows {
            let port: Port = serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { id, source })?;
            let Some(node) = &port.node else { continue };
            let interface = port.effective_interface();
            let done = sqlx::query(
                "INSERT INTO port_interfaces (node, interface, port_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(node)
            .bind(&interface)
            .bind(id)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 0 {
                refused.push((format!("{}/{}", port.project, port.name), format!("{node}/{interface}")));
            }
        }
        Ok(refused)
    }
}

/// Every object at one consistent point, and where a follower of the change log goes on from.
#[derive(Debug)]
pub struct Snapshot {
    /// Every revision up to here is in `objects`.
    pub horizon: i64,
    /// Revisions after `horizon` that `objects` already holds (transactions that committed
    /// while the snapshot was taken): a follower skips them.
    pub included: std::collections::BTreeSet<i64>,
    pub objects: Vec<StoredObject>,
}

impl Store {
    /// All objects, read in one repeatable-read transaction. The safe horizon is read first,
    /// so every revision up to it is in; the few revisions that committed in between are named,
    /// so a follower starting at the horizon neither misses nor repeats a change.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut objects = Vec::new();
        let (horizon, included) = self.snapshot_in_chunks(1000, |chunk| objects.extend(chunk)).await?;
        Ok(Snapshot { horizon, included, objects })
    }

    /// As [`Store::snapshot`], handing the objects to `take` a chunk at a time as they arrive,
    /// so that a caller that consumes them (the controller's compiler) never holds them all:
    /// at 200,000 objects that is about 100 MiB that would otherwise stay in the process.
    /// Returns the horizon and the revisions after it that the objects already hold.
    pub async fn snapshot_in_chunks(
        &self,
        chunk: usize,
        mut take: impl FnMut(Vec<StoredObject>),
    ) -> Result<(i64, std::collections::BTreeSet<i64>)> {
        use futures::TryStreamExt;
        let horizon = self.safe_horizon().await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        {
            let mut rows = sqlx::query(concat!("SELECT ", object_columns!(), " FROM objects")).fetch(&mut *tx);
            let mut objects = Vec::with_capacity(chunk);
            while let Some(row) = rows.try_next().await? {
                objects.push(from_row(&row)?.object);
                if objects.len() >= chunk.max(1) {
                    take(std::mem::replace(&mut objects, Vec::with_capacity(chunk)));
                }
            }
            take(objects);
        }
        // A compaction visible here finished before this snapshot began, and only ever covers
        // revisions that were committed then: they are all among the objects.
        let compacted: i64 = sqlx::query_scalar("SELECT compacted FROM revision_state").fetch_one(&mut *tx).await?;
        let horizon = horizon.max(compacted);
        let included: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT revision FROM changes WHERE revision > $1")
            .bind(horizon)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((horizon, included.into_iter().collect()))
    }
}
