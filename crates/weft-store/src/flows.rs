//! The flow log (DESIGN.md §10, migrations/0009): flows the controllers joined, appended in
//! batches and read back by id, by time and by project, then deleted when they are older than
//! the retention.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use weft_model::flow::{Flow, Verdict};

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
        if flows.is_empty() {
            return Ok(());
        }
        let at: Vec<i64> = flows.iter().map(|f| f.at_ms).collect();
        let projects: Vec<Json<Vec<String>>> = flows.iter().map(|f| Json(f.projects())).collect();
        let bodies: Vec<Json<&Flow>> = flows.iter().map(Json).collect();
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
