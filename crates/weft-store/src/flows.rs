//! The flow log (DESIGN.md §10, migrations/0009): flows the controllers joined, appended in
//! batches and read back by id, by time and by project, then deleted when they are older than
//! the retention.

use chrono::{DateTime, Utc};
pub use sqlx::types::Json;
use weft_model::flow::{Flow, FlowTieredRule, Verdict};

use crate::Store;
use crate::error::Result;

/// What a read of the flow log selects.
#[derive(Debug, Clone, Default)]
pub struct FlowQuery {
    /// Flows naming this project (a port of it at either end).
    pub project: Option<String>,
    /// Flows after this id.
    pub after_id: i64,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub verdict: Option<Verdict>,
    pub protocol: Option<u8>,
    /// The destination port.
    pub port: Option<u16>,
    pub limit: i64,
    /// The newest `limit` (still in ascending order), rather than the first after `after_id`.
    pub newest: bool,
}

/// The read of the flow log, in one order or the other.
macro_rules! flows_sql {
    ($order:literal) => {
        concat!(
            "SELECT id, flow FROM flow_events \
             WHERE id > $1 AND ($2::text IS NULL OR projects @> ARRAY[$2::text]) \
             AND ($3::timestamptz IS NULL OR at >= $3) AND ($4::timestamptz IS NULL OR at < $4) \
             AND ($5::text IS NULL OR flow->>'verdict' = $5) \
             AND ($6::int IS NULL OR (flow->>'protocol')::int = $6) \
             AND ($7::int IS NULL OR (flow->>'dst_port')::int = $7) \
             ORDER BY id ",
            $order,
            " LIMIT $8"
        )
    };
}

impl Store {
    /// Appends flows to the log in one statement.
    pub async fn insert_flows(&self, flows: &[Flow]) -> Result<()> {
        // A statement at most this many flows: a connection's buffers keep the size of the
        // largest message it sent, for the pool's life (issue 23 measured 32 connections
        // holding some 230 MiB after a minute of 8,000 flows a second sent 4,000 at a time).
        const FLOWS_PER_STATEMENT: usize = 500;
        for chunk in flows.chunks(FLOWS_PER_STATEMENT) {
            let at: Vec<i64> = chunk.iter().map(|f| f.at_ms).collect();
            let projects: Vec<Json<Vec<String>>> = chunk.iter().map(|f| Json(f.projects())).collect();
            let bodies: Vec<Json<&Flow>> = chunk.iter().map(Json).collect();
            sqlx::query(
                "INSERT INTO flow_events (at, projects, flow) \
                 SELECT to_timestamp(at / 1000.0), ARRAY(SELECT jsonb_array_elements_text(p)), f \
                 FROM UNNEST($1::bigint[], $2::jsonb[], $3::jsonb[]) AS t(at, p, f)",
            )
            .bind(at)
            .bind(projects)
            .bind(bodies)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// The flows `query` selects, in ascending id order, each with its id.
    pub async fn flows(&self, query: &FlowQuery) -> Result<Vec<Flow>> {
        let verdict = query.verdict.map(|v| match v {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
        });
        let sql = if query.newest { flows_sql!("DESC") } else { flows_sql!("ASC") };
        let rows: Vec<(i64, Json<Flow>)> = sqlx::query_as(sql)
            .bind(query.after_id)
            .bind(query.project.as_deref())
            .bind(query.since)
            .bind(query.until)
            .bind(verdict)
            .bind(query.protocol.map(i32::from))
            .bind(query.port.map(i32::from))
            .bind(query.limit)
            .fetch_all(&self.pool)
            .await?;
        let mut flows: Vec<Flow> = rows
            .into_iter()
            .map(|(id, Json(mut flow))| {
                flow.id = id;
                flow
            })
            .collect();
        if query.newest {
            flows.reverse();
        }
        Ok(flows)
    }

    /// The newest id in the flow log (0: none).
    pub async fn last_flow_id(&self) -> Result<i64> {
        let (id,): (Option<i64>,) = sqlx::query_as("SELECT max(id) FROM flow_events").fetch_one(&self.pool).await?;
        Ok(id.unwrap_or(0))
    }

    /// Deletes the flows older than `before`; how many.
    pub async fn prune_flows(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM flow_events WHERE at < $1").bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}

/// A node's port's traffic of one kind in a minute (migrations/0010): the sum of its flow
/// windows' entries with the same key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MinuteRow {
    pub minute: DateTime<Utc>,
    pub node: String,
    pub port: uuid::Uuid,
    pub project: String,
    pub ingress: bool,
    /// The remote address; none on a row of drops only.
    pub remote: Option<String>,
    pub remote_port: Option<uuid::Uuid>,
    pub remote_project: Option<String>,
    pub protocol: i32,
    pub service: Option<i32>,
    pub denied: bool,
    pub grp: Option<uuid::Uuid>,
    pub rule: Option<uuid::Uuid>,
    pub isolated: bool,
    pub started: i64,
    pub ended: i64,
    pub packets_sent: i64,
    pub bytes_sent: i64,
    pub packets_received: i64,
    pub bytes_received: i64,
    pub sampled: i64,
    pub dropped: i64,
    /// What decided, by name when the window was rolled up: the allowing rule's group and
    /// origin, or a denied row's isolating groups (joined by ", ").
    pub group_name: Option<String>,
    pub origin: Option<String>,
    pub isolated_by: Option<String>,
    /// A tiered policy's rule that decided (migrations/0013): the policy, the rule's place, and
    /// what the node enforced, by name as it was when the window was rolled up.
    pub policy: Option<uuid::Uuid>,
    pub policy_rule: Option<i32>,
    pub tiered: Option<Json<FlowTieredRule>>,
}

impl MinuteRow {
    /// A row of `port`'s side in `minute`, with nothing counted yet and no remote.
    pub fn empty(minute: DateTime<Utc>, node: &str, port: uuid::Uuid, project: &str, ingress: bool) -> MinuteRow {
        MinuteRow {
            minute,
            node: node.to_string(),
            port,
            project: project.to_string(),
            ingress,
            remote: None,
            remote_port: None,
            remote_project: None,
            protocol: 0,
            service: None,
            denied: false,
            grp: None,
            rule: None,
            isolated: false,
            started: 0,
            ended: 0,
            packets_sent: 0,
            bytes_sent: 0,
            packets_received: 0,
            bytes_received: 0,
            sampled: 0,
            dropped: 0,
            group_name: None,
            origin: None,
            isolated_by: None,
            policy: None,
            policy_rule: None,
            tiered: None,
        }
    }
}

impl Store {
    /// Replaces what the flow rollups hold of `node`'s `minute` with `rows`, in one transaction.
    pub async fn replace_flow_minute(&self, minute: DateTime<Utc>, node: &str, rows: &[MinuteRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM flow_minutes WHERE minute = $1 AND node = $2")
            .bind(minute)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        if !rows.is_empty() {
            let col = |f: fn(&MinuteRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
            sqlx::query(
                "INSERT INTO flow_minutes (minute, node, port, project, ingress, remote, remote_port, \
                 remote_project, protocol, service, denied, grp, rule, isolated, started, ended, packets_sent, \
                 bytes_sent, packets_received, bytes_received, sampled, dropped, group_name, origin, isolated_by, \
                 policy, policy_rule, tiered) \
                 SELECT $1, $2, port, project, ingress, remote::inet, remote_port, remote_project, protocol, service, \
                 denied, grp, rule, isolated, started, ended, packets_sent, bytes_sent, packets_received, \
                 bytes_received, sampled, dropped, group_name, origin, isolated_by, policy, policy_rule, tiered \
                 FROM UNNEST($3::uuid[], $4::text[], $5::bool[], $6::text[], $7::uuid[], $8::text[], $9::int[], \
                 $10::int[], $11::bool[], $12::uuid[], $13::uuid[], $14::bool[], $15::bigint[], $16::bigint[], \
                 $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], \
                 $23::text[], $24::text[], $25::text[], $26::uuid[], $27::int[], $28::jsonb[]) \
                 AS t(port, project, ingress, remote, remote_port, remote_project, protocol, service, denied, grp, \
                 rule, isolated, started, ended, packets_sent, bytes_sent, packets_received, bytes_received, \
                 sampled, dropped, group_name, origin, isolated_by, policy, policy_rule, tiered)",
            )
            .bind(minute)
            .bind(node)
            .bind(rows.iter().map(|r| r.port).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.project.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.ingress).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.remote.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.remote_port).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.remote_project.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.protocol).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.service).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.denied).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.grp).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.rule).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.isolated).collect::<Vec<_>>())
            .bind(col(|r| r.started))
            .bind(col(|r| r.ended))
            .bind(col(|r| r.packets_sent))
            .bind(col(|r| r.bytes_sent))
            .bind(col(|r| r.packets_received))
            .bind(col(|r| r.bytes_received))
            .bind(col(|r| r.sampled))
            .bind(col(|r| r.dropped))
            .bind(rows.iter().map(|r| r.group_name.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.origin.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.isolated_by.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.policy).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.policy_rule).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tiered.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The rollups of minutes in [since, until) naming `project` at either end (every project's
    /// when none), or, with `group`, the rows a rule of that group decided.
    pub async fn flow_minutes(
        &self,
        project: Option<&str>,
        group: Option<uuid::Uuid>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<MinuteRow>> {
        let rows = sqlx::query_as(
            "SELECT minute, node, port, project, ingress, host(remote) AS remote, remote_port, remote_project, \
             protocol, service, denied, grp, rule, isolated, started, ended, packets_sent, bytes_sent, \
             packets_received, bytes_received, sampled, dropped, group_name, origin, isolated_by, policy, \
             policy_rule, tiered FROM flow_minutes \
             WHERE minute >= $1 AND minute < $2 \
             AND ($3::text IS NULL OR project = $3 OR remote_project = $3) \
             AND ($4::uuid IS NULL OR grp = $4) \
             ORDER BY minute, node, port",
        )
        .bind(since)
        .bind(until)
        .bind(project)
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Deletes the rollups of minutes before `before`; how many rows.
    pub async fn prune_flow_minutes(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM flow_minutes WHERE minute < $1").bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
