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

/// An object row with its owning project, as read inside a transaction.
#[derive(Debug, Clone)]
pub(crate) struct ObjectRow {
    pub(crate) object: StoredObject,
    pub(crate) project_id: Option<Uuid>,
}

fn from_row(row: &sqlx::postgres::PgRow) -> Result<ObjectRow> {
    let kind: String = row.try_get("kind")?;
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
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
    pub async fn create(&mut self, mut resource: Resource) -> Result<StoredObject> {
        resource.validate().map_err(StoreError::Invalid)?;
        resource.clear_meta();
        let id = Uuid::new_v4();
        match &mut resource {
            Resource::Project(_) | Resource::VirtualNetwork(_) | Resource::ClusterPolicy(_) => {}
            Resource::SecurityGroup(sg) => assign_rule_ids(sg),
            Resource::Port(port) => {
                if port.security_groups.is_none() {
                    port.security_groups = Some(vec![weft_model::DEFAULT_GROUP.to_string()]);
                }
                if port.network.is_some() {
                    let project_id = self.require_project(&port.project.clone()).await?;
                    self.prepare_port_addresses(project_id, port, None).await?;
                }
            }
        }
        let (object, project_id) = self.insert(id, &resource).await?;
        self.write_refs(id, project_id, &resource, false).await?;
        if let (Resource::Port(port), Some(project_id)) = (&resource, project_id) {
            self.hold_port_addresses(project_id, id, port).await?;
        }
        if let Resource::Project(project) = &resource {
            Box::pin(self.create(Resource::SecurityGroup(SecurityGroup::default_for(&project.name)))).await?;
        }
        Ok(object)
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
        self.write_refs(id, current.project_id, &resource, true).await?;
        if let (Resource::Port(port), Some(project_id)) = (&resource, current.project_id) {
            self.hold_port_addresses(project_id, id, port).await?;
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

    /// Inserts an object and its change-log row in one statement. The project is looked up by
    /// name in the same statement: no row back means it does not exist.
    async fn insert(&mut self, id: Uuid, resource: &Resource) -> Result<(StoredObject, Option<Uuid>)> {
        let kind = resource.kind();
        let body = body_of(resource);
        let project_source = match resource.project() {
            // A project's own row: no owner, the nil scope.
            None => "(SELECT NULL::uuid AS id, $9::text AS unused) p",
            Some(_) => {
                "(SELECT id, $9::text AS unused FROM objects WHERE kind = 'project' \
                 AND scope = '00000000-0000-0000-0000-000000000000' AND name = $9) p"
            }
        };
        // A port's claims (migrations/0003_port_claims.sql) go in with it, in the same
        // statement: a port created is one round trip, as before claims existed (a bulk load of
        // 100,000 pods took a third longer with a statement of their own).
        let port = match resource {
            Resource::Port(port) => Some(port),
            _ => None,
        };
        let claims = if port.is_some() {
            ", a AS (INSERT INTO port_addresses (address, port_id) SELECT unnest($10::inet[]), $2 FROM o \
                   ON CONFLICT DO NOTHING RETURNING address), \
             i AS (INSERT INTO port_interfaces (node, interface, port_id) SELECT $11, $12, $2 FROM o \
                   WHERE $11::text IS NOT NULL ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT r.revision, o.project_id, ARRAY(SELECT address FROM a), \
                    $11::text IS NULL OR EXISTS (SELECT 1 FROM i) FROM r, o"
        } else {
            " SELECT r.revision, o.project_id, ARRAY[]::inet[], true FROM r, o"
        };
        let sql = format!(
            "WITH r AS (SELECT COALESCE($1::bigint, nextval('revisions')) AS revision), \
             o AS (INSERT INTO objects (id, kind, project_id, scope, name, labels, body, revision, created_at, updated_at) \
                   SELECT $2, $3, p.id, COALESCE(p.id, '00000000-0000-0000-0000-000000000000'), $4, $5, $6::json, \
                          r.revision, $7, $7 FROM r, {project_source} RETURNING project_id), \
             c AS (INSERT INTO changes (revision, seq, kind, id, op, body, created_at, updated_at) \
                   SELECT r.revision, $8, $3, $2, 'put', $6::json, $7, $7 FROM r, o){claims}"
        );
        let seq = self.seq;
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.revision)
            .bind(id)
            .bind(kind.as_str())
            .bind(resource.name())
            .bind(labels_json(resource))
            .bind(&body)
            .bind(self.now)
            .bind(seq)
            .bind(resource.project().unwrap_or_default());
        if let Some(port) = port {
            query = query
                .bind(port.ips.iter().map(|ip| ipnet::IpNet::from(*ip)).collect::<Vec<_>>())
                .bind(port.node.clone())
                .bind(port.node.as_ref().map(|_| port.effective_interface()));
        }
        let row: Option<(i64, Option<Uuid>, Vec<ipnet::IpNet>, bool)> =
            query.fetch_optional(&mut *self.tx).await.map_err(|e| StoreError::from_db(e, || describe(resource)))?;
        let Some((revision, project_id, held, bound)) = row else {
            let project = resource.project().unwrap_or_default();
            return Err(StoreError::invalid("/project", format!("project {project:?} does not exist")));
        };
        if let Some(port) = port {
            check_claims(port, &held, bound)?;
        }
        self.revision = Some(revision);
        self.next_seq(1);
        let object = StoredObject { id, kind, revision, created_at: self.now, updated_at: self.now, body };
        Ok((object, project_id))
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

    /// Rewrites the references an object holds (to networks and security groups).
    async fn write_refs(
        &mut self,
        id: Uuid,
        project_id: Option<Uuid>,
        resource: &Resource,
        replace: bool,
    ) -> Result<()> {
        let (Some(project_id), Some(project)) = (project_id, resource.project()) else {
            return Ok(());
        };
        let project = project.to_string();
        let mut targets = BTreeSet::new();
        match resource {
            Resource::Project(_) | Resource::VirtualNetwork(_) | Resource::ClusterPolicy(_) => {}
            Resource::SecurityGroup(sg) => {
                for (i, rule) in sg.rules.iter().enumerate() {
                    if let Remote::SecurityGroup { security_group } = &rule.remote {
                        // Another project's group is neither checked nor held: whether it
                        // exists is none of this project's business, and a rule of this
                        // project must not keep the other from deleting it (issue 17). The
                        // compiler matches nothing while it does not exist.
                        if ObjectRef::parse(security_group).is_ok_and(|r| r.project.is_some_and(|p| p != project)) {
                            continue;
                        }
                        let pointer = format!("/rules/{i}/remote/security_group");
                        targets.insert(
                            self.resolve(Kind::SecurityGroup, project_id, &project, security_group, &pointer).await?,
                        );
                    }
                }
            }
            Resource::Port(port) => {
                if let Some(network) = &port.network {
                    targets.insert(self.resolve_network(project_id, &project, network).await?);
                }
                for (i, g) in port.security_groups.iter().flatten().enumerate() {
                    let pointer = format!("/security_groups/{i}");
                    targets.insert(self.resolve(Kind::SecurityGroup, project_id, &project, g, &pointer).await?);
                }
            }
        }
        let targets: Vec<Uuid> = targets.into_iter().collect();
        let sql = if replace {
            // The deleted and the inserted keys are disjoint, so one statement can do both.
            "WITH gone AS (DELETE FROM refs WHERE from_id = $1 AND NOT to_id = ANY($2)) \
             INSERT INTO refs (from_id, to_id) SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING"
        } else if targets.is_empty() {
            return Ok(());
        } else {
            "INSERT INTO refs (from_id, to_id) SELECT $1, unnest($2::uuid[])"
        };
        sqlx::query(sql)
            .bind(id)
            .bind(&targets)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_db(e, || describe(resource)))?;
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
        let vn = match self.known.locked_networks.get(&network_id) {
            Some(vn) => Arc::clone(vn),
            None => {
                let body: String = sqlx::query_scalar("SELECT body::text FROM objects WHERE id = $1 FOR NO KEY UPDATE")
                    .bind(network_id)
                    .fetch_one(&mut *self.tx)
                    .await?;
                let vn: Arc<VirtualNetwork> = Arc::new(
                    serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { id: network_id, source })?,
                );
                self.known.locked_networks.insert(network_id, Arc::clone(&vn));
                vn
            }
        };
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

    /// Records the port's addresses as held on its network, once the port row exists.
    async fn hold_port_addresses(&mut self, project_id: Uuid, port_id: Uuid, port: &Port) -> Result<()> {
        let Some(network) = &port.network else {
            return Ok(());
        };
        let network_id = self.resolve_network(project_id, &port.project, network).await?;
        let held: Vec<IpAddr> = sqlx::query_scalar(
            "INSERT INTO ip_allocations (network_id, address, port_id) SELECT $1, unnest($2::inet[]), $3 \
             ON CONFLICT DO NOTHING RETURNING address",
        )
        .bind(network_id)
        .bind(port.ips.iter().map(|ip| ipnet::IpNet::from(*ip)).collect::<Vec<_>>())
        .bind(port_id)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(|n: ipnet::IpNet| n.addr())
        .collect();
        if let Some(taken) = port.ips.iter().find(|ip| !held.contains(ip)) {
            return Err(StoreError::conflict(
                ConflictKind::AddressInUse,
                format!("address {taken} on network {network:?} is already held by another port"),
            ));
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
