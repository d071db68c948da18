//! The OpenAPI description of the REST API, built from the code: schemas come from the model
//! types' `ToSchema` derives, paths from the same list of kinds the router serves. The checked-in
//! `api/openapi.yaml` is this document; a test fails when they drift (regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p weft-api --test openapi`).

use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
};
use weft_model::{ClusterPolicy, Kind, Port, Project, SecurityGroup, VirtualNetwork};

use crate::nodes::{
    AssignBlocks, CreateJoinToken, CreateNode, CreatedJoinToken, CreatedNode, GroupNode, GroupStatus, NodeBlocks,
    NodeInfo, NodeRealization, Realization,
};
use crate::problem::Problem;
use crate::reach::{ExplainRequest, ExplainResponse, ReachMatrix, SideExplanation};
use crate::tokens::{CreateToken, CreatedToken, TokenInfo};
use crate::{BatchRequest, Info};

const JSON: &str = "application/json";

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn collect<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().to_string(), T::schema()));
    T::schemas(schemas);
}

fn schema_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Project => "Project",
        Kind::VirtualNetwork => "VirtualNetwork",
        Kind::SecurityGroup => "SecurityGroup",
        Kind::Port => "Port",
        Kind::ClusterPolicy => "ClusterPolicy",
    }
}

fn json_response(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(JSON, ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(crate::problem::CONTENT_TYPE, ContentBuilder::new().schema(Some(schema_ref("Problem"))).build())
        .build()
}

/// A parameter, with the constraints the server enforces on it (no more: a value the schema
/// calls invalid must be one the server refuses).
fn param(name: &str, location: ParameterIn, required: bool, description: &str) -> utoipa::openapi::path::Parameter {
    let typed = |ty| ObjectBuilder::new().schema_type(SchemaType::new(ty));
    let integer = |min: i64, max: Option<i64>| {
        let s = typed(Type::Integer).minimum(Some(min as f64));
        match max {
            Some(max) => s.maximum(Some(max as f64)),
            None => s,
        }
    };
    let words = |values: &[&str]| typed(Type::String).enum_values(Some(values.iter().copied()));
    let schema = match name {
        "limit" => integer(1, Some(i64::from(weft_store::MAX_PAGE))),
        "since" => integer(0, None),
        "revision" => typed(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64))),
        "port" => integer(0, Some(65535)),
        "watch" | "cascade" => typed(Type::Boolean),
        "family" => words(&["ipv4", "ipv6"]),
        "protocol" => words(&["tcp", "udp", "sctp", "icmp", "icmpv6"]),
        _ => typed(Type::String),
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(if required { Required::True } else { Required::False })
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn body(schema: RefOr<Schema>, content_type: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(content_type, ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

/// The errors every `/v1` operation may answer.
fn with_common_errors(op: OperationBuilder) -> OperationBuilder {
    op.response("401", problem("No, unknown, expired or revoked token"))
        .response("403", problem("The token may not touch this project"))
        .response("500", problem("Internal error (details only in the server log)"))
}

fn item_operations(kind: Kind, key_params: &[(&str, &str)]) -> PathItem {
    let name = schema_name(kind);
    let tag = kind.plural();
    let params = || key_params.iter().map(|(n, d)| param(n, ParameterIn::Path, true, d)).collect::<Vec<_>>();
    let if_match =
        || param("If-Match", ParameterIn::Header, false, "Only if the object is still at this ETag (else 412)");
    let suffix = if key_params.len() == 2 { "ByName" } else { "" };
    let object = || json_response(&format!("The {kind}, with ETag"), schema_ref(name));
    let get = with_common_errors(
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(format!("get{name}{suffix}")))
            .parameters(Some(params()))
            .response("200", object())
            .response("404", problem("No such object")),
    );
    let put = with_common_errors(
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(format!("replace{name}{suffix}")))
            .parameters(Some(params().into_iter().chain([if_match()])))
            .request_body(Some(body(schema_ref(name), JSON)))
            .response("200", object())
            .response("404", problem("No such object"))
            .response("409", problem("Conflicts with stored objects"))
            .response("412", problem("If-Match names another revision"))
            .response("422", problem("Invalid fields (each named by a JSON pointer)")),
    );
    let patch = with_common_errors(
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(format!("patch{name}{suffix}")))
            .summary(Some("JSON merge patch (RFC 7396)"))
            .parameters(Some(params().into_iter().chain([if_match()])))
            .request_body(Some(body(ObjectBuilder::new().into(), "application/merge-patch+json")))
            .response("200", object())
            .response("404", problem("No such object"))
            .response("409", problem("Conflicts with stored objects"))
            .response("412", problem("If-Match names another revision"))
            .response("422", problem("Invalid fields")),
    );
    let mut delete_params = params();
    delete_params.push(if_match());
    if matches!(kind, Kind::Project | Kind::VirtualNetwork) {
        delete_params.push(param("cascade", ParameterIn::Query, false, "Also delete the children"));
    }
    let delete = with_common_errors(
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(format!("delete{name}{suffix}")))
            .parameters(Some(delete_params))
            .response("200", json_response("Deleted; the revision of the deletion", schema_ref("Revision")))
            .response("404", problem("No such object"))
            .response("409", problem("Still referenced, or has children and no cascade"))
            .response("412", problem("If-Match names another revision")),
    );
    let mut item = PathItem::new(HttpMethod::Get, get.build());
    item.put = Some(put.build());
    item.patch = Some(patch.build());
    item.delete = Some(delete.build());
    item
}

fn collection_operations(kind: Kind) -> PathItem {
    let name = schema_name(kind);
    let tag = kind.plural();
    let list_schema = ObjectBuilder::new()
        .property("items", ArrayBuilder::new().items(schema_ref(name)))
        .required("items")
        .property("revision", ObjectBuilder::new().schema_type(SchemaType::new(Type::Integer)))
        .required("revision")
        .property("continue", ObjectBuilder::new().schema_type(SchemaType::new(Type::String)))
        .build();
    let list = with_common_errors(
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(match name.strip_suffix('y') {
                Some(stem) => format!("list{stem}ies"),
                None => format!("list{name}s"),
            }))
            .parameters(Some(
                [
                    (kind != Kind::ClusterPolicy)
                        .then(|| param("project", ParameterIn::Query, false, "Only this project's objects")),
                    Some(param("labelSelector", ParameterIn::Query, false, "Kubernetes label selector syntax")),
                    Some(param("name", ParameterIn::Query, false, "Only objects with this name")),
                    Some(param("limit", ParameterIn::Query, false, "Page size (1-1000, default 500)")),
                    Some(param("continue", ParameterIn::Query, false, "The continue token of the previous page")),
                ]
                .into_iter()
                .flatten(),
            ))
            .response("200", json_response("A page of objects and the revision it reflects", list_schema.into()))
            .response("400", problem("A bad query parameter")),
    );
    let create = with_common_errors(
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(format!("create{name}")))
            .request_body(Some(body(schema_ref(name), JSON)))
            .response("201", json_response(&format!("The created {kind}, with ETag and Location"), schema_ref(name)))
            .response("400", problem("Malformed JSON"))
            .response("409", problem("Duplicate name, address in use or exhausted"))
            .response("413", problem("Body too large"))
            .response("415", problem("Not JSON"))
            .response("422", problem("Invalid fields (each named by a JSON pointer)")),
    );
    let mut item = PathItem::new(HttpMethod::Get, list.build());
    item.post = Some(create.build());
    item
}

fn simple(method: HttpMethod, tag: &str, id: &str, summary: &str, response: utoipa::openapi::Response) -> PathItem {
    PathItem::new(
        method,
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(id))
            .summary(Some(summary))
            .responses(ResponsesBuilder::new().response("200", response).build())
            .security(SecurityRequirement::default())
            .build(),
    )
}

pub fn openapi() -> OpenApi {
    let mut schemas = Vec::new();
    collect::<Project>(&mut schemas);
    collect::<VirtualNetwork>(&mut schemas);
    collect::<SecurityGroup>(&mut schemas);
    collect::<Port>(&mut schemas);
    collect::<ClusterPolicy>(&mut schemas);
    collect::<Problem>(&mut schemas);
    collect::<Info>(&mut schemas);
    collect::<BatchRequest>(&mut schemas);
    collect::<CreateToken>(&mut schemas);
    collect::<TokenInfo>(&mut schemas);
    collect::<CreatedToken>(&mut schemas);
    collect::<CreateNode>(&mut schemas);
    collect::<CreatedNode>(&mut schemas);
    collect::<NodeInfo>(&mut schemas);
    collect::<AssignBlocks>(&mut schemas);
    collect::<NodeBlocks>(&mut schemas);
    collect::<CreateJoinToken>(&mut schemas);
    collect::<CreatedJoinToken>(&mut schemas);
    collect::<Realization>(&mut schemas);
    collect::<NodeRealization>(&mut schemas);
    collect::<GroupStatus>(&mut schemas);
    collect::<GroupNode>(&mut schemas);
    collect::<ExplainRequest>(&mut schemas);
    collect::<ExplainResponse>(&mut schemas);
    collect::<SideExplanation>(&mut schemas);
    collect::<ReachMatrix>(&mut schemas);
    {
        use weft_model::flow::{
            DnsQuestion, Flow, FlowCounters, FlowEndpoint, FlowGroup, FlowKind, FlowRule, SideDecision, Verdict,
        };
        collect::<Flow>(&mut schemas);
        collect::<FlowEndpoint>(&mut schemas);
        collect::<FlowRule>(&mut schemas);
        collect::<FlowGroup>(&mut schemas);
        collect::<SideDecision>(&mut schemas);
        collect::<FlowCounters>(&mut schemas);
        collect::<DnsQuestion>(&mut schemas);
        collect::<FlowKind>(&mut schemas);
        collect::<Verdict>(&mut schemas);
    }
    schemas.push((
        "Revision".to_string(),
        ObjectBuilder::new()
            .property("revision", ObjectBuilder::new().schema_type(SchemaType::new(Type::Integer)))
            .required("revision")
            .into(),
    ));
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    schemas.dedup_by(|a, b| a.0 == b.0);

    let mut paths = PathsBuilder::new();
    for kind in Kind::ALL {
        paths = paths.path(format!("/v1/{}", kind.plural()), collection_operations(kind));
        if kind.is_cluster_scoped() {
            paths = paths.path(
                format!("/v1/{}/{{key}}", kind.plural()),
                item_operations(kind, &[("key", &format!("The {kind}'s id or name"))]),
            );
        } else {
            paths = paths
                .path(format!("/v1/{}/{{key}}", kind.plural()), item_operations(kind, &[("key", "The object's id")]))
                .path(
                    format!("/v1/{}/{{project}}/{{name}}", kind.plural()),
                    item_operations(kind, &[("project", "The project's name"), ("name", "The object's name")]),
                );
        }
    }
    let batch = with_common_errors(
        OperationBuilder::new()
            .tag("batch")
            .operation_id(Some("batch"))
            .summary(Some("Many writes in one transaction and one revision, all or nothing"))
            .request_body(Some(body(schema_ref("BatchRequest"), JSON)))
            .response("200", json_response("The revision and each operation's result", ObjectBuilder::new().into()))
            .response("404", problem("An operation names an object that does not exist; nothing was written"))
            .response("409", problem("An operation conflicts; nothing was written"))
            .response("412", problem("An operation's if_match names another revision; nothing was written"))
            .response("422", problem("An operation is invalid (pointer under /operations/N); nothing was written")),
    );
    let changes = with_common_errors(
        OperationBuilder::new()
            .tag("changes")
            .operation_id(Some("watchChanges"))
            .summary(Some("The change log after `since`, as newline-delimited JSON, then live"))
            .parameters(Some([
                param("since", ParameterIn::Query, false, "Revision to read after (default 0)"),
                param("watch", ParameterIn::Query, false, "Keep streaming (default true)"),
            ]))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("One JSON object per line: changes and bookmarks")
                    .content("application/x-ndjson", ContentBuilder::new().build())
                    .build(),
            )
            .response("410", problem("`since` was compacted: list again and watch from the list's revision")),
    );
    let flows = with_common_errors(
        OperationBuilder::new()
            .tag("flows")
            .operation_id(Some("listFlows"))
            .summary(Some("What the datapath saw, with what decided each side (a project token: its project's)"))
            .parameters(Some([
                param("project", ParameterIn::Query, false, "Flows with a port of this project at an end"),
                param("from", ParameterIn::Query, false, "A label selector over the source's port"),
                param("to", ParameterIn::Query, false, "A label selector over the destination's port"),
                param("verdict", ParameterIn::Query, false, "allowed or denied"),
                param("protocol", ParameterIn::Query, false, "tcp, udp, sctp, icmp, icmpv6 or a number"),
                param("port", ParameterIn::Query, false, "The destination port"),
                param(
                    "policy",
                    ParameterIn::Query,
                    false,
                    "A group, or the NetworkPolicy a rule came from, that decided",
                ),
                param("since", ParameterIn::Query, false, "A time (RFC 3339) or a duration back from now (15m)"),
                param("until", ParameterIn::Query, false, "A time (RFC 3339) or a duration back from now"),
                param("since_id", ParameterIn::Query, false, "Flows after this id, oldest first"),
                param("limit", ParameterIn::Query, false, "At most this many (1 to 10,000; default 100): the newest"),
                param("watch", ParameterIn::Query, false, "Stream flows as they are written (newline-delimited)"),
            ]))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("`{\"items\": [Flow]}`, oldest first; with watch, one Flow per line")
                    .content(
                        JSON,
                        ContentBuilder::new()
                            .schema(Some(
                                ObjectBuilder::new()
                                    .property("items", ArrayBuilder::new().items(schema_ref("Flow")))
                                    .required("items"),
                            ))
                            .build(),
                    )
                    .content("application/x-ndjson", ContentBuilder::new().build())
                    .build(),
            ),
    );
    let flow_graph = with_common_errors(
        OperationBuilder::new()
            .tag("flows")
            .operation_id(Some("flowGraph"))
            .summary(Some("A project's traffic groups: ports grouped by a label, edges with verdicts and deciders"))
            .parameters(Some([
                param("project", ParameterIn::Query, false, "The project (a project token: its own)"),
                param("window", ParameterIn::Query, false, "How far back, 1m to 7d (default 15m)"),
                param("group", ParameterIn::Query, false, "The label to group ports by (default app)"),
            ]))
            .response(
                "200",
                json_response(
                    "Nodes (id, label, ports, dropped, column, row) and edges (from, to, protocol, service, \
                     verdict, connections, denied, bytes, egress and ingress decisions)",
                    ObjectBuilder::new().into(),
                ),
            ),
    );
    let group_hits = with_common_errors(
        OperationBuilder::new()
            .tag("flows")
            .operation_id(Some("groupHits"))
            .summary(Some("The connections each of a group's rules allowed, per minute"))
            .parameters(Some([
                param("project", ParameterIn::Path, true, "The project's name"),
                param("name", ParameterIn::Path, true, "The group's name"),
                param("window", ParameterIn::Query, false, "How far back (default 1h)"),
            ]))
            .response("200", json_response("Per rule: connections, and per minute", ObjectBuilder::new().into()))
            .response("404", problem("No such group (or not the token's project)")),
    );
    let token_create = with_common_errors(
        OperationBuilder::new()
            .tag("tokens")
            .operation_id(Some("createToken"))
            .request_body(Some(body(schema_ref("CreateToken"), JSON)))
            .response("201", json_response("The token; its secret is shown only here", schema_ref("CreatedToken"))),
    );
    let token_list = with_common_errors(
        OperationBuilder::new()
            .tag("tokens")
            .operation_id(Some("listTokens"))
            .response("200", json_response("Tokens, without secrets", ObjectBuilder::new().into())),
    );
    let token_revoke = with_common_errors(
        OperationBuilder::new()
            .tag("tokens")
            .operation_id(Some("revokeToken"))
            .parameters(Some([param("id", ParameterIn::Path, true, "The token's id")]))
            .response("200", json_response("Revoked", ObjectBuilder::new().into()))
            .response("404", problem("No such token")),
    );
    let node_create = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("createNode"))
            .summary(Some("Register a node (admin); its credential is shown only here"))
            .request_body(Some(body(schema_ref("CreateNode"), JSON)))
            .response("201", json_response("The node and its credential", schema_ref("CreatedNode")))
            .response("409", problem("The node is already registered")),
    );
    let node_list = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("listNodes"))
            .summary(Some("Nodes with their connection, last ack and lag (admin)"))
            .response("200", json_response("`items`: NodeInfo", ObjectBuilder::new().into())),
    );
    let node_delete = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("deleteNode"))
            .parameters(Some([param("name", ParameterIn::Path, true, "The node's name")]))
            .response("200", json_response("Deleted", ObjectBuilder::new().into()))
            .response("404", problem("No such node")),
    );
    let node_blocks = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("assignNodeBlocks"))
            .summary(Some("The pod-network blocks the cluster assigned a node: Node.spec.podCIDRs (admin)"))
            .parameters(Some([param("name", ParameterIn::Path, true, "The node's name")]))
            .request_body(Some(body(schema_ref("AssignBlocks"), JSON)))
            .response("200", json_response("The node's blocks on the network, after", schema_ref("NodeBlocks")))
            .response("400", problem("The body is not JSON"))
            .response("404", problem("No such network"))
            .response("409", problem("A block is another node's, or overlaps one of the node's holding addresses"))
            .response("415", problem("The body is not application/json"))
            .response("422", problem("A field is invalid; the problem names it")),
    );
    let join_token_create = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("createJoinToken"))
            .summary(Some("A join token with which agents register their own nodes (admin)"))
            .request_body(Some(body(schema_ref("CreateJoinToken"), JSON)))
            .response("201", json_response("The token; shown only here", schema_ref("CreatedJoinToken"))),
    );
    let join_token_list = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("listJoinTokens"))
            .summary(Some("Join tokens with their limits and uses, without secrets (admin)"))
            .response("200", json_response("`items`: join tokens", ObjectBuilder::new().into())),
    );
    let join_token_revoke = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("revokeJoinToken"))
            .summary(Some("Revoke a join token: it registers no node from now on (admin)"))
            .parameters(Some([param("id", ParameterIn::Path, true, "The join token's id")]))
            .response("200", json_response("Revoked", ObjectBuilder::new().into()))
            .response("404", problem("No such join token")),
    );
    let realization = with_common_errors(
        OperationBuilder::new()
            .tag("nodes")
            .operation_id(Some("realization"))
            .summary(Some("Whether a revision is applied by every node it concerns"))
            .parameters(Some([param("revision", ParameterIn::Query, true, "The revision")]))
            .response("200", json_response("Per node: what it needs and has applied", schema_ref("Realization"))),
    );
    let group_status = |params: &[(&str, &str)]| {
        with_common_errors(
            OperationBuilder::new()
                .tag("security-groups")
                .operation_id(Some(if params.len() == 1 { "securityGroupStatus" } else { "securityGroupStatusByName" }))
                .summary(Some("The nodes a group reaches and whether each has applied its last change"))
                .parameters(Some(params.iter().map(|(n, d)| param(n, ParameterIn::Path, true, d))))
                .response("200", json_response("Reach and realization", schema_ref("GroupStatus")))
                .response("404", problem("No such group")),
        )
        .build()
    };
    let explain = with_common_errors(
        OperationBuilder::new()
            .tag("policy")
            .operation_id(Some("explain"))
            .summary(Some("The verdict for one packet between two endpoints, with the group and rule on each side"))
            .request_body(Some(body(schema_ref("ExplainRequest"), JSON)))
            .response("200", json_response("The verdict, at the revision it reflects", schema_ref("ExplainResponse")))
            .response("503", problem("The compiler has not reached the revision asked for within 10 s")),
    );
    let reach = with_common_errors(
        OperationBuilder::new()
            .tag("policy")
            .operation_id(Some("reach"))
            .summary(Some("Which selected ports reach which (the lab probe's matrix, as the compiler computes it)"))
            .parameters(Some([
                param("protocol", ParameterIn::Query, false, "tcp (the default), udp, sctp or icmp"),
                param("port", ParameterIn::Query, false, "The destination port (tcp, udp, sctp)"),
                param("project", ParameterIn::Query, false, "Only the ports of this project"),
                param("labelSelector", ParameterIn::Query, false, "Only the ports these labels select"),
                param("family", ParameterIn::Query, false, "ipv4 (the default) or ipv6"),
                param(
                    "outside",
                    ParameterIn::Query,
                    false,
                    "An address outside the cluster, as the endpoint `outside`",
                ),
                param("revision", ParameterIn::Query, false, "Answer once the compiler has reached this revision"),
            ]))
            .response("429", problem("This token has a matrix in progress already (Retry-After)"))
            .response(
                "503",
                problem("The compiler has not reached the revision within 10 s, or the server is busy with other matrices (Retry-After)"),
            )
            .response("200", json_response("The matrix, at the revision it reflects", schema_ref("ReachMatrix"))),
    );
    let mut nodes = PathItem::new(HttpMethod::Post, node_create.build());
    nodes.get = Some(node_list.build());
    paths = paths
        .path("/v1/nodes", nodes)
        .path("/v1/nodes/{name}", PathItem::new(HttpMethod::Delete, node_delete.build()))
        .path("/v1/nodes/{name}/blocks", PathItem::new(HttpMethod::Put, node_blocks.build()))
        .path("/v1/join-tokens", {
            let mut item = PathItem::new(HttpMethod::Post, join_token_create.build());
            item.get = Some(join_token_list.build());
            item
        })
        .path("/v1/join-tokens/{id}", PathItem::new(HttpMethod::Delete, join_token_revoke.build()))
        .path("/v1/realization", PathItem::new(HttpMethod::Get, realization.build()))
        .path("/v1/explain", PathItem::new(HttpMethod::Post, explain.build()))
        .path("/v1/reach", PathItem::new(HttpMethod::Get, reach.build()))
        .path(
            "/v1/security-groups/{key}/status",
            PathItem::new(HttpMethod::Get, group_status(&[("key", "The group's id")])),
        )
        .path(
            "/v1/security-groups/{project}/{name}/status",
            PathItem::new(
                HttpMethod::Get,
                group_status(&[("project", "The project's name"), ("name", "The group's name")]),
            ),
        );
    let mut tokens = PathItem::new(HttpMethod::Post, token_create.build());
    tokens.get = Some(token_list.build());
    paths = paths
        .path("/v1/batch", PathItem::new(HttpMethod::Post, batch.build()))
        .path("/v1/changes", PathItem::new(HttpMethod::Get, changes.build()))
        .path("/v1/flows", PathItem::new(HttpMethod::Get, flows.build()))
        .path("/v1/flows/graph", PathItem::new(HttpMethod::Get, flow_graph.build()))
        .path("/v1/security-groups/{project}/{name}/hits", PathItem::new(HttpMethod::Get, group_hits.build()))
        .path(
            "/v1/info",
            PathItem::new(
                HttpMethod::Get,
                with_common_errors(OperationBuilder::new().tag("info").operation_id(Some("info")).response(
                    "200",
                    json_response("Version, revisions and the agents' gRPC address", schema_ref("Info")),
                ))
                .build(),
            ),
        )
        .path("/v1/tokens", tokens)
        .path("/v1/tokens/{id}", PathItem::new(HttpMethod::Delete, token_revoke.build()))
        .path(
            "/healthz",
            simple(
                HttpMethod::Get,
                "health",
                "healthz",
                "The process is up",
                ResponseBuilder::new().description("ok").build(),
            ),
        )
        .path(
            "/readyz",
            simple(
                HttpMethod::Get,
                "health",
                "readyz",
                "The database answers (else 503)",
                ResponseBuilder::new().description("ready").build(),
            ),
        )
        .path(
            "/metrics",
            simple(
                HttpMethod::Get,
                "health",
                "metrics",
                "Prometheus metrics",
                ResponseBuilder::new().description("OpenMetrics text").build(),
            ),
        );

    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()))
        .build();
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("weft config API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some("Projects, virtual networks, security groups and ports; see README.md")),
        )
        .paths(paths.build())
        .components(Some(components))
        .security(Some([SecurityRequirement::new("bearer", Vec::<String>::new())]))
        .build();
    document_every_status(&mut doc);
    doc
}

/// Adds to each operation the errors any of its kind can answer, where it does not say more
/// about them already: a schema-driven client (or fuzzer) must find every status the server
/// answers documented (issue 17: 400 was on none of 22 operations that answer it).
fn document_every_status(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in operations.into_iter().flatten() {
            let with_body = op.request_body.is_some();
            let responses = &mut op.responses.responses;
            let mut add = |code: &str, why: &str| {
                responses.entry(code.to_string()).or_insert_with(|| RefOr::T(problem(why)));
            };
            match path.as_str() {
                "/healthz" | "/metrics" => continue,
                "/readyz" => {
                    add("503", "Not ready: each reason in `errors`");
                    continue;
                }
                _ => {}
            }
            add(
                "400",
                "A bad request: malformed JSON, a bad query parameter or If-Match header, a NUL byte in the path or query",
            );
            add("401", "No, unknown, expired or revoked token");
            add("403", "The token may not do this");
            add("414", "The URI is longer than 8 KiB");
            add("500", "Internal error (details only in the server log)");
            add("503", "The database is unavailable (Retry-After: 1); nothing was changed");
            if with_body {
                add("413", "Body too large");
                add("415", "Not JSON");
                add("422", "Invalid fields (each named by a JSON pointer)");
            }
        }
    }
}

/// The document as YAML, as checked in at `api/openapi.yaml`.
pub fn yaml() -> String {
    openapi().to_yaml().unwrap_or_default()
}
