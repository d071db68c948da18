//! Nodes: the identity each agent presents (a credential, stored as a digest), join tokens with
//! which an agent registers its own node, and the realization status control processes record
//! (connection, acks). Status is not configuration: no revision, no change log.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::tokens::{digest, generate_secret_with};
use crate::{ConflictKind, Result, Store, StoreError};

/// The PostgreSQL channel on which a node's deletion is announced (the payload is its name).
pub const NODES_CHANNEL: &str = "weft_node_deleted";

/// How long after its controller last refreshed it a node still counts as connected: a
/// controller that died cannot say its agents left.
pub const SEEN_WITHIN: Duration = Duration::from_secs(30);

/// A node and what control processes last recorded about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub connected: bool,
    /// The control process its stream is (or was last) on.
    pub controller: Option<String>,
    pub address: Option<String>,
    /// The node's addresses between nodes, as its agent last said.
    pub underlay: Vec<std::net::IpAddr>,
    /// The pod-network blocks the node's ports get their addresses from (DESIGN.md §9).
    pub blocks: Vec<ipnet::IpNet>,
    pub agent_version: Option<String>,
    pub connected_at: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub acked_revision: i64,
    pub acked_at: Option<DateTime<Utc>>,
    /// Every update meant for the node up to this revision is in its datapath.
    pub realized_revision: i64,
    /// The last error the agent reported applying an update.
    pub last_error: Option<String>,
    /// What the agent applied but refuses to enforce as asked (with its last good ack).
    pub problems: Vec<String>,
}

/// What a control process records of one node's acks.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub node: String,
    pub acked: i64,
    pub realized: i64,
    pub error: Option<String>,
    pub problems: Vec<String>,
}

/// A join token just created: the only time its secret is known.
#[derive(Debug, Clone, Serialize)]
pub struct NewJoinToken {
    pub id: Uuid,
    pub secret: String,
    pub expires_at: DateTime<Utc>,
}

/// What a join token may register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenLimits {
    /// How long it works.
    pub expires_in: Duration,
    /// How many nodes it registers.
    pub uses: u32,
    /// The one node name it registers, if it is bound to one.
    pub node: Option<String>,
}

/// A join token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JoinTokenInfo {
    pub id: Uuid,
    pub description: String,
    /// The node name it is bound to.
    pub node: Option<String>,
    /// How many nodes it may register (`None`: any number, for a token made before limits).
    pub uses: Option<i32>,
    pub used: i32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

type StatusRow = (
    String,
    DateTime<Utc>,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    i64,
    Option<DateTime<Utc>>,
    i64,
    Option<String>,
    sqlx::types::Json<Vec<String>>,
    Vec<ipnet::IpNet>,
    Vec<ipnet::IpNet>,
);

macro_rules! status_columns {
    () => {
        "name, created_at, connected AND last_seen > now() - make_interval(secs => $1), controller, \
         address, agent_version, connected_at, last_seen, acked_revision, acked_at, realized_revision, last_error, problems, \
         underlay, ARRAY(SELECT b.block FROM ip_blocks b WHERE b.node = nodes.name ORDER BY b.block)"
    };
}

fn status(row: StatusRow) -> NodeStatus {
    let (name, created_at, connected, controller, address, agent_version, connected_at, last_seen) =
        (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7);
    NodeStatus {
        name,
        created_at,
        connected,
        controller,
        address,
        underlay: row.13.iter().map(|n| n.addr()).collect(),
        blocks: row.14,
        agent_version,
        connected_at,
        last_seen,
        acked_revision: row.8,
        acked_at: row.9,
        realized_revision: row.10,
        last_error: row.11,
        problems: row.12.0,
    }
}

fn check_name(name: &str) -> Result<()> {
    weft_model::syntax::dns_subdomain(name).map_err(|e| StoreError::invalid("/name", e))
}

async fn insert_node(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    name: &str,
    joined_with: Option<Uuid>,
) -> Result<String> {
    check_name(name)?;
    let credential = generate_secret_with("weftn_");
    sqlx::query("INSERT INTO nodes (name, digest, joined_with) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(digest(&credential))
        .bind(joined_with)
        .execute(&mut **tx)
        .await
        .map_err(|e| match StoreError::from_db(e, || format!("node {name}")) {
            StoreError::Conflict { .. } => {
                StoreError::conflict(ConflictKind::Duplicate, format!("node {name} is already registered"))
            }
            other => other,
        })?;
    Ok(credential)
}

impl Store {
    /// Registers a node and returns its credential (shown once).
    pub async fn create_node(&self, name: &str) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        let credential = insert_node(&mut tx, name, None).await?;
        tx.commit().await?;
        Ok(credential)
    }

    /// Deletes a node: its credential stops working, and the control process that holds its
    /// agent's stream hears of it on [`NODES_CHANNEL`] and ends the stream.
    pub async fn delete_node(&self, name: &str) -> Result<bool> {
        // The node's address blocks go with it, those that hold no address: its pods are gone
        // with it, or will be, and a block still holding one is released when its node is
        // deleted again (a node of the same name may come back and take it up). Blocks the
        // cluster assigned stay: they are the Kubernetes Node's, withdrawn when it goes.
        let mut tx = self.pool.begin().await?;
        // The networks' rows first, as allocations take them: a transaction giving one of the
        // node's pods an address in a block of its own has committed before the block is
        // looked at (and the next statement sees its address), and none starts meanwhile.
        sqlx::query(
            "SELECT 1 FROM objects WHERE id IN (SELECT network_id FROM ip_blocks WHERE node = $1) \
             ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let deleted: Option<String> = sqlx::query_scalar(
            "WITH d AS (DELETE FROM nodes WHERE name = $1 RETURNING name), \
             b AS (DELETE FROM ip_blocks k WHERE k.node = $1 AND NOT k.assigned AND NOT EXISTS \
                   (SELECT 1 FROM ip_allocations a WHERE a.network_id = k.network_id AND a.address <<= k.block)) \
             SELECT name FROM d, LATERAL (SELECT pg_notify($2, d.name)) n",
        )
        .bind(name)
        .bind(NODES_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.is_some())
    }

    /// Sends the name of every node deleted from now on (by any process) to `deleted`, until
    /// its receiver is dropped. Notifications can be lost while the listening connection is
    /// down: callers also check, now and then, that their nodes still exist
    /// ([`Store::nodes_seen`]).
    pub async fn follow_node_deletions(&self, deleted: tokio::sync::mpsc::Sender<String>) {
        loop {
            match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match listener.listen(NODES_CHANNEL).await {
                    Ok(()) => loop {
                        tokio::select! {
                            notification = listener.try_recv() => match notification {
                                Ok(Some(n)) => {
                                    if deleted.send(n.payload().to_string()).await.is_err() {
                                        return;
                                    }
                                }
                                // The connection was lost (the next call reconnects), or failed.
                                Ok(None) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot hear of node deletions; retrying");
                                    break;
                                }
                            },
                            _ = deleted.closed() => return,
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for node deletions; retrying"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot connect to hear of node deletions; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = deleted.closed() => return,
            }
        }
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeStatus>> {
        let rows: Vec<StatusRow> = sqlx::query_as(concat!("SELECT ", status_columns!(), " FROM nodes ORDER BY name"))
            .bind(SEEN_WITHIN.as_secs_f64())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(status).collect())
    }

    /// The node a credential names, if any.
    pub async fn authenticate_node(&self, credential: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM nodes WHERE digest = $1")
            .bind(digest(credential))
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn create_join_token(&self, limits: &JoinTokenLimits, description: &str) -> Result<NewJoinToken> {
        if let Some(node) = &limits.node {
            weft_model::syntax::dns_subdomain(node).map_err(|e| StoreError::invalid("/node", e))?;
        }
        let secret = generate_secret_with("weftj_");
        let id = Uuid::new_v4();
        let expires_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO join_tokens (id, digest, description, expires_at, uses, node) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6) RETURNING expires_at",
        )
        .bind(id)
        .bind(digest(&secret))
        .bind(description)
        .bind(limits.expires_in.as_secs_f64())
        .bind(i32::try_from(limits.uses).unwrap_or(i32::MAX))
        .bind(limits.node.as_deref())
        .fetch_one(&self.pool)
        .await?;
        Ok(NewJoinToken { id, secret, expires_at })
    }

    pub async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>> {
        type Row =
            (Uuid, String, Option<String>, Option<i32>, i32, DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, description, node, uses, used, created_at, expires_at, revoked_at FROM join_tokens \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, description, node, uses, used, created_at, expires_at, revoked_at)| JoinTokenInfo {
                id,
                description,
                node,
                uses,
                used,
                created_at,
                expires_at,
                revoked_at,
            })
            .collect())
    }

    /// Revokes a join token: it registers no node from now on. `false` when there is none.
    pub async fn revoke_join_token(&self, id: Uuid) -> Result<bool> {
        let done = sqlx::query("UPDATE join_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// An agent registers its node with a join token: once per node name, within the token's
    /// uses, only the node the token names if it names one, and never a node name that ports
    /// already reference unless the token names it (a general-purpose token must not let its
    /// holder claim the name of a node whose pods exist, and so their policy).
    pub async fn join(&self, join_token: &str, node: &str) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        let token: Option<(Uuid, Option<i32>, i32, Option<String>)> = sqlx::query_as(
            "SELECT id, uses, used, node FROM join_tokens \
             WHERE digest = $1 AND expires_at > now() AND revoked_at IS NULL FOR UPDATE",
        )
        .bind(digest(join_token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, uses, used, bound)) = token else {
            return Err(StoreError::Denied("the join token is unknown, expired or revoked".into()));
        };
        if uses.is_some_and(|uses| used >= uses) {
            return Err(StoreError::Denied("the join token is used up".into()));
        }
        match bound {
            Some(bound) if bound != node => {
                return Err(StoreError::Denied(format!("the join token is for node {bound}, not {node}")));
            }
            Some(_) => {}
            None => {
                let referenced: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM port_interfaces WHERE node = $1)")
                        .bind(node)
                        .fetch_one(&mut *tx)
                        .await?;
                if referenced {
                    return Err(StoreError::Denied(format!(
                        "ports are placed on node {node} already: only a join token made for it (--node {node}) registers it"
                    )));
                }
            }
        }
        let credential = insert_node(&mut tx, node, Some(id)).await?;
        sqlx::query("UPDATE join_tokens SET used = used + 1 WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(credential)
    }

    /// Where every node's pods are (DESIGN.md §9), as (destination, node, the node's underlay
    /// addresses): each block of a node that has told its underlay, and each address a port
    /// holds on a network split into node blocks outside its node's blocks (one a pod asked
    /// for). Only such networks, which only an admin makes: an address of a port elsewhere is
    /// no pod's to route, and routing it would let a port's writer send any prefix to a node.
    pub async fn route_table(&self) -> Result<Vec<(ipnet::IpNet, String, Vec<std::net::IpAddr>)>> {
        let rows: Vec<(ipnet::IpNet, String, Vec<ipnet::IpNet>)> = sqlx::query_as(
            "SELECT b.block::inet, b.node, n.underlay FROM ip_blocks b JOIN nodes n ON n.name = b.node \
             WHERE cardinality(n.underlay) > 0 \
             UNION ALL \
             SELECT host(a.address)::inet, n.name, n.underlay FROM ip_allocations a \
             JOIN objects v ON v.id = a.network_id AND v.body->'node_blocks' IS NOT NULL \
             JOIN objects o ON o.id = a.port_id JOIN nodes n ON n.name = o.body->>'node' \
             WHERE cardinality(n.underlay) > 0 AND NOT EXISTS \
               (SELECT 1 FROM ip_blocks b WHERE b.node = n.name AND a.address <<= b.block) \
             ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(d, node, via)| (d, node, via.iter().map(|v| v.addr()).collect())).collect())
    }

    /// The cluster's pod networks: the subnets of every network split into node blocks. Pod
    /// traffic to anywhere else is masqueraded where it leaves its node (DESIGN.md §9).
    pub async fn cluster_prefixes(&self) -> Result<Vec<ipnet::IpNet>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT (s->>'cidr')::cidr FROM objects v, json_array_elements(v.body->'subnets') s \
             WHERE v.kind = 'virtual-network' AND v.body->'node_blocks' IS NOT NULL ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// What the route table depends on besides the configuration's revision (blocks claimed
    /// in ports' writes come with one): every node's underlay addresses and every block's
    /// node (an assigned block comes with no revision), as one short digest.
    pub async fn route_fingerprint(&self) -> Result<String> {
        Ok(sqlx::query_scalar(
            "SELECT md5(coalesce((SELECT string_agg(name || '=' || underlay::text, ';' ORDER BY name) FROM nodes), '') \
             || '|' || coalesce((SELECT string_agg(block::text || '=' || node, ';' ORDER BY block) FROM ip_blocks), ''))",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Makes `blocks` the blocks the cluster assigned `node` on `network` (`project/name`, a
    /// network split into node blocks): Kubernetes' Node.spec.podCIDRs, passed on by
    /// kube-manager; none withdraws them. The node's ports get that family's addresses only
    /// from its assigned blocks. The node need not be registered yet. Its blocks on the
    /// network, after.
    pub async fn assign_node_blocks(
        &self,
        network: &str,
        node: &str,
        blocks: &[ipnet::IpNet],
    ) -> Result<Vec<ipnet::IpNet>> {
        let not_found = || StoreError::NotFound { kind: weft_model::Kind::VirtualNetwork, key: network.to_string() };
        let reference = weft_model::ObjectRef::parse(network).map_err(|e| StoreError::invalid("/network", e))?;
        let (Some(project), name) = (reference.project, reference.name) else { return Err(not_found()) };
        let mut tx = self.pool.begin().await?;
        // The network row's lock, as ports' writes take it: allocations and blocks of the
        // network are serialised.
        let row: Option<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT v.id, v.body::text FROM objects v JOIN objects p ON p.id = v.project_id \
             WHERE v.kind = 'virtual-network' AND p.name = $1 AND v.name = $2 FOR UPDATE OF v",
        )
        .bind(project)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, body) = row.ok_or_else(not_found)?;
        let vn: weft_model::VirtualNetwork =
            serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { id, source })?;
        if vn.node_blocks.is_none() {
            return Err(StoreError::invalid("/network", format!("{network:?} is not split into node blocks")));
        }
        let held = crate::ipam::assign(&mut tx, id, &vn, node, blocks).await?;
        tx.commit().await?;
        Ok(held)
    }

    /// A control process took the node's stream.
    pub async fn node_connected(
        &self,
        node: &str,
        controller: &str,
        address: &str,
        agent_version: &str,
        underlay: &[std::net::IpAddr],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET controller = $2, connected = true, address = $3, agent_version = $4, \
             connected_at = now(), last_seen = now(), underlay = $5 WHERE name = $1",
        )
        .bind(node)
        .bind(controller)
        .bind(address)
        .bind(agent_version)
        .bind(underlay.iter().map(|a| ipnet::IpNet::from(*a)).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records many nodes' acks in one statement.
    pub async fn nodes_acked(&self, controller: &str, statuses: &[Acked]) -> Result<()> {
        let names: Vec<&str> = statuses.iter().map(|s| s.node.as_str()).collect();
        let acked: Vec<i64> = statuses.iter().map(|s| s.acked).collect();
        let realized: Vec<i64> = statuses.iter().map(|s| s.realized).collect();
        let errors: Vec<Option<&str>> = statuses.iter().map(|s| s.error.as_deref()).collect();
        let problems: Vec<serde_json::Value> = statuses.iter().map(|s| serde_json::json!(s.problems)).collect();
        sqlx::query(
            "UPDATE nodes SET acked_revision = s.acked, acked_at = now(), realized_revision = s.realized, \
             last_error = s.error, problems = s.problems, last_seen = now() \
             FROM unnest($2::text[], $3::int8[], $4::int8[], $5::text[], $6::jsonb[]) \
                  AS s(name, acked, realized, error, problems) \
             WHERE nodes.name = s.name AND nodes.controller = $1",
        )
        .bind(controller)
        .bind(&names)
        .bind(&acked)
        .bind(&realized)
        .bind(&errors)
        .bind(&problems)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refreshes `last_seen` of the nodes whose streams this control process holds, and
    /// returns those of them that still exist (a node deleted meanwhile is not among them).
    ///
    /// A node whose row another statement holds is passed over: that statement is the status
    /// writer's, which sets `last_seen` itself, and two statements locking many rows each in
    /// their own order deadlock (seen under `weft bench fanout`).
    pub async fn nodes_seen(&self, controller: &str, nodes: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "WITH u AS (UPDATE nodes SET last_seen = now() WHERE name IN \
                 (SELECT name FROM nodes WHERE controller = $1 AND name = ANY($2) AND connected \
                  FOR UPDATE SKIP LOCKED)) \
             SELECT name FROM nodes WHERE name = ANY($2)",
        )
        .bind(controller)
        .bind(nodes)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The stream ended (only if this control process still holds it: the agent may already
    /// be on another).
    pub async fn node_disconnected(&self, node: &str, controller: &str) -> Result<()> {
        sqlx::query("UPDATE nodes SET connected = false WHERE name = $1 AND controller = $2")
            .bind(node)
            .bind(controller)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// What the change log holds after `revision`: the last revision committed and when the
    /// first was committed (`None` when nothing was committed after it, or it is compacted).
    /// A follower at `revision` is that far behind, whatever holds it back.
    pub async fn committed_beyond(&self, revision: i64) -> Result<Option<(i64, DateTime<Utc>)>> {
        let row: (Option<i64>, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT max(revision), min(committed_at) FROM changes WHERE revision > $1")
                .bind(revision)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.0.zip(row.1))
    }

    /// The oldest transaction open in weft's database other than this session's: its process
    /// id and how long it has been open. A long one holds every follower of the change log
    /// back (crate docs).
    pub async fn oldest_transaction(&self) -> Result<Option<(i32, f64)>> {
        Ok(sqlx::query_as(
            "SELECT pid, extract(epoch FROM now() - xact_start)::float8 FROM pg_stat_activity \
             WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
             ORDER BY xact_start LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// When the first revision after `revision` was committed, if the change log still has it.
    pub async fn committed_after(&self, revision: i64) -> Result<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar("SELECT min(committed_at) FROM changes WHERE revision > $1")
            .bind(revision)
            .fetch_one(&self.pool)
            .await?)
    }
}
