//! The client verbs: build a request from flags or a file, call the API through weft-client,
//! print the answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use weft_client::{Client, Key, ListOptions};
use weft_model::{ClusterPolicy, Kind, Port, Project, SecurityGroup, VirtualNetwork};

use clap::{Args, Subcommand};

use crate::common::{ClientArgs, Output, client, parse_duration};
use crate::output;

/// The verbs of the REST API's objects, and the server's state.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Projects (tenants; a Kubernetes namespace becomes one).
    Project {
        #[command(subcommand)]
        command: ObjectCommand<ProjectCreate>,
    },
    /// Virtual networks and their subnets.
    Network {
        #[command(subcommand)]
        command: ObjectCommand<NetworkCreate>,
    },
    /// Security groups and their rules.
    Sg {
        #[command(subcommand)]
        command: SgCommand,
    },
    /// Ports (virtual machine interfaces, pods).
    Port {
        #[command(subcommand)]
        command: ObjectCommand<PortCreate>,
    },
    /// Tiered cluster policies (admin only): ordered rules that accept, deny or pass, before
    /// the security groups (tier admin) or after them (tier baseline). Rules come from a file
    /// (-f); flags set the rest.
    ClusterPolicy {
        #[command(subcommand)]
        command: ObjectCommand<ClusterPolicyCreate>,
    },
    /// API tokens (admin only).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Nodes: register one (its credential is printed once), list them with their connection
    /// and realization, delete one.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Join tokens, with which agents register their own nodes.
    JoinToken {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// Wait until every node a revision concerns has applied it.
    Wait {
        #[arg(long)]
        revision: i64,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// The server's version, current revision and agent address.
    Info,
    /// Exit 0 when the server is ready (`GET /readyz`, no token needed), 1 otherwise: for
    /// health checks.
    Ready,
    /// What the datapath saw, in the style of `hubble observe`: connections with the rule that
    /// allowed each side, denied packets with the policies that isolate their port, DNS
    /// queries. The last ones first (oldest first), then, with -f, the new ones as they come.
    Flows {
        /// Only flows with a port of this project at an end (a project token: its own).
        #[arg(long)]
        project: Option<String>,
        /// Only flows from ports these labels select, e.g. app=yelb-ui.
        #[arg(long)]
        from: Option<String>,
        /// Only flows to ports these labels select.
        #[arg(long)]
        to: Option<String>,
        /// allowed or denied.
        #[arg(long)]
        verdict: Option<String>,
        /// The destination port.
        #[arg(long)]
        port: Option<u16>,
        /// tcp, udp, sctp, icmp, icmpv6 or a number.
        #[arg(long)]
        protocol: Option<String>,
        /// Only flows a policy decided: a security group's name, or the NetworkPolicy its rule
        /// came from.
        #[arg(long)]
        policy: Option<String>,
        /// Only flows since then: a duration back (30s, 15m, 12h, 7d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// How many of the last flows to print first.
        #[arg(long, default_value_t = 20)]
        last: u32,
        /// Keep printing new flows as they come.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Print the change log after a revision, then follow it.
    Changes {
        /// Print what came after this revision.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Stop once caught up instead of following new revisions.
        #[arg(long)]
        no_watch: bool,
    },
}

/// The verbs every kind has.
#[derive(Debug, Subcommand)]
pub enum ObjectCommand<C: Args> {
    /// Create one (from flags, or from a JSON/YAML file with -f).
    Create(C),
    /// Show one.
    Get { key: String },
    /// List them.
    List(ListArgs),
    /// Change labels, or replace the whole object from a file with -f.
    Update(UpdateArgs),
    /// Delete one.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this project's.
    #[arg(long)]
    pub project: Option<String>,
    /// Kubernetes label selector, e.g. `app=db,tier in (a,b),!legacy`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// `name` (projects) or `project/name`, or an id.
    pub key: String,
    /// Replace the object with this file's content (JSON or YAML).
    #[arg(short = 'f', long, conflicts_with_all = ["label", "remove_label"])]
    pub file: Option<PathBuf>,
    /// Set a label (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Remove a label (repeatable).
    #[arg(long, value_name = "KEY")]
    pub remove_label: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub key: String,
    /// Also delete what the object contains (a project's objects, a network's ports).
    #[arg(long)]
    pub cascade: bool,
}

/// Where a created object comes from: its name and labels as flags, or a JSON/YAML file (the
/// flags then override the file's name and labels).
#[derive(Debug, Args)]
pub struct ObjectSource {
    /// `name` for a project, `project/name` for everything else.
    pub key: Option<String>,
    /// A JSON or YAML file holding the object.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// A label (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProjectCreate {
    #[command(flatten)]
    pub source: ObjectSource,
}

#[derive(Debug, Args)]
pub struct NetworkCreate {
    #[command(flatten)]
    pub source: ObjectSource,
    /// A subnet, optionally with its gateway: `10.0.0.0/24` or `10.0.0.0/24,gateway=10.0.0.1`.
    #[arg(long)]
    pub subnet: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ClusterPolicyCreate {
    #[command(flatten)]
    pub source: ObjectSource,
    /// admin (before the security groups) or baseline (after them).
    #[arg(long, value_parser = ["admin", "baseline"])]
    pub tier: Option<String>,
    /// 0-1000; lower decides first within the tier.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Apply to ports matching this selector (default: every port of the selected projects).
    #[arg(long)]
    pub ports: Option<String>,
    /// Apply to ports of projects matching this selector (default: every project).
    #[arg(long)]
    pub projects: Option<String>,
}

#[derive(Debug, Args)]
pub struct SgCreate {
    #[command(flatten)]
    pub source: ObjectSource,
    /// Apply to the project's ports matching this selector (`""` for all of them).
    #[arg(long)]
    pub selector: Option<String>,
    /// Directions the group isolates (default both).
    #[arg(long, value_delimiter = ',')]
    pub policy_types: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortCreate {
    #[command(flatten)]
    pub source: ObjectSource,
    #[arg(long)]
    pub node: Option<String>,
    /// A virtual network of the project; addresses not given are allocated from it.
    #[arg(long)]
    pub network: Option<String>,
    #[arg(long)]
    pub ip: Vec<std::net::IpAddr>,
    #[arg(long)]
    pub mac: Option<String>,
    #[arg(long)]
    pub interface: Option<String>,
    /// Security groups (repeatable); without any, the port gets the project's `default`.
    #[arg(long = "sg")]
    pub security_groups: Vec<String>,
    /// Give the port no security group at all.
    #[arg(long, conflicts_with = "security_groups")]
    pub no_security_groups: bool,
    /// A named port: `http=tcp/80` (repeatable).
    #[arg(long)]
    pub named_port: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SgCommand {
    #[command(flatten)]
    Object(ObjectCommand<SgCreate>),
    /// Add or remove rules.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// The nodes a group reaches and whether each has applied its last change.
    Status { key: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Register a node; its credential is printed once.
    Create { name: String },
    /// Nodes with their connection, last ack and lag.
    List,
    /// Forget a node (its credential stops working).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token; it is printed once.
    Create {
        /// Lifetime, e.g. 1h or 7d (at most 30 days).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires_in: Duration,
        /// How many nodes it registers.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// The one node it registers. Needed to register a node that ports are placed on
        /// already.
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Write the token to this file (mode 0600) instead of printing it: for a Secret of
        /// one token per node (deploy/kubernetes/agent.yaml).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Join tokens with their limits and how often each was used (never their secrets).
    List,
    /// Revoke a join token: it registers no node from now on.
    Delete { id: uuid::Uuid },
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule to a group.
    Add(Box<RuleAdd>),
    /// Remove a rule by its id.
    Remove { group: String, rule_id: uuid::Uuid },
}

#[derive(Debug, Args)]
pub struct RuleAdd {
    /// The group: `project/name` or an id.
    pub group: String,
    #[arg(long, value_parser = ["ingress", "egress"])]
    pub direction: String,
    /// any, tcp, udp, sctp, icmp, icmpv6 or a protocol number.
    #[arg(long, default_value = "any")]
    pub protocol: String,
    /// Ports: `80`, `8000-8080` or a port name (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<String>,
    /// IPv4, IPv6 or any.
    #[arg(long)]
    pub ethertype: Option<String>,
    /// ICMP type[/code].
    #[arg(long)]
    pub icmp: Option<String>,
    /// Remote: a CIDR.
    #[arg(long, group = "remote")]
    pub remote_cidr: Option<String>,
    /// Prefixes excepted from --remote-cidr (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "remote_cidr")]
    pub except: Vec<String>,
    /// Remote: members of a security group (`name` or `project/name`).
    #[arg(long, group = "remote")]
    pub remote_sg: Option<String>,
    /// Remote: ports matching a label selector.
    #[arg(long, group = "remote")]
    pub remote_selector: Option<String>,
    /// With --remote-selector: in projects matching this selector.
    #[arg(long, requires = "remote_selector")]
    pub remote_projects: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long, value_parser = ["admin", "reader", "writer"])]
        role: String,
        /// The project of a reader or writer token.
        #[arg(long)]
        project: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 12h or 30d; without it the token lives until revoked.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token.
    Revoke { id: uuid::Uuid },
}

pub async fn run(command: ClientCommand, args: &ClientArgs, data_dir: &Path) -> anyhow::Result<()> {
    let c = client(args, data_dir)?;
    let out = args.output;
    match command {
        ClientCommand::Info => output::show(out, &serde_json::to_value(c.info().await?)?, None),
        ClientCommand::Ready => match c.ready().await {
            Ok(true) => {
                println!("ready");
                Ok(())
            }
            Ok(false) => anyhow::bail!("{} is not ready", args.server),
            Err(e) => Err(e).with_context(|| format!("{} does not answer", args.server)),
        },
        ClientCommand::Project { command } => object::<Project, _>(&c, out, command, project_body).await,
        ClientCommand::Network { command } => object::<VirtualNetwork, _>(&c, out, command, network_body).await,
        ClientCommand::Port { command } => object::<Port, _>(&c, out, command, port_body).await,
        ClientCommand::ClusterPolicy { command } => {
            object::<ClusterPolicy, _>(&c, out, command, cluster_policy_body).await
        }
        ClientCommand::Sg { command: SgCommand::Object(command) } => {
            object::<SecurityGroup, _>(&c, out, command, sg_body).await
        }
        ClientCommand::Sg { command: SgCommand::Rule { command } } => rule(&c, out, command).await,
        ClientCommand::Token { command } => token(&c, out, command).await,
        ClientCommand::Node { command } => node(&c, out, command).await,
        ClientCommand::JoinToken { command } => match command {
            JoinTokenCommand::Create { expires_in, uses, node, description, token_file } => {
                let mut created = c.create_join_token(expires_in, uses, node.as_deref(), &description).await?;
                if let (Some(path), Some(map)) = (token_file, created.as_object_mut()) {
                    let token = map.remove("token").and_then(|t| t.as_str().map(String::from)).unwrap_or_default();
                    write_private(&path, &format!("{token}\n"))?;
                    map.insert("token_file".into(), json!(path));
                }
                output::show(out, &created, None)
            }
            JoinTokenCommand::List => output::show_join_tokens(out, &c.list_join_tokens().await?),
            JoinTokenCommand::Delete { id } => {
                c.revoke_join_token(id).await?;
                output::show(out, &json!({ "revoked": id }), None)
            }
        },
        ClientCommand::Wait { revision, timeout } => wait(&c, out, revision, timeout).await,
        ClientCommand::Sg { command: SgCommand::Status { key } } => {
            output::show(out, &c.group_status(&Key::parse(Kind::SecurityGroup, &key)).await?, None)
        }
        ClientCommand::Changes { since, no_watch } => changes(&c, out, since, !no_watch).await,
        ClientCommand::Flows { project, from, to, verdict, port, protocol, policy, since, last, follow } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            let named =
                [("project", project), ("from", from), ("to", to), ("verdict", verdict), ("protocol", protocol)];
            for (name, value) in named.into_iter().chain([("policy", policy), ("since", since)]) {
                if let Some(v) = value {
                    query.push((name, v));
                }
            }
            if let Some(p) = port {
                query.push(("port", p.to_string()));
            }
            flows(&c, out, &query, last, follow).await
        }
    }
}

/// Common handling of create/get/list/update/delete for one kind.
async fn object<R, C>(
    c: &Client,
    out: Output,
    command: ObjectCommand<C>,
    body: fn(&C) -> anyhow::Result<Value>,
) -> anyhow::Result<()>
where
    R: weft_client::Resource,
    C: clap::Args,
{
    let kind = R::KIND;
    match command {
        ObjectCommand::Create(args) => {
            let value = body(&args)?;
            let object: R = serde_json::from_value(value).context("the object is not valid")?;
            let created = c.create(&object).await?;
            output::show(out, &serde_json::to_value(created)?, Some(kind))
        }
        ObjectCommand::Get { key } => {
            let object: R = c.get(&Key::parse(kind, &key)).await?;
            output::show(out, &serde_json::to_value(object)?, Some(kind))
        }
        ObjectCommand::List(ListArgs { project, selector }) => {
            let items: Vec<R> =
                c.list_all(&ListOptions { project, label_selector: selector, ..ListOptions::default() }).await?;
            output::show_list(out, &serde_json::to_value(items)?, kind)
        }
        ObjectCommand::Update(UpdateArgs { key, file, label, remove_label }) => {
            let key = Key::parse(kind, &key);
            let updated: R = match file {
                Some(file) => {
                    let mut value = read_file(&file)?;
                    fill_identity(&mut value, &key);
                    let object: R = serde_json::from_value(value).context("the file is not a valid object")?;
                    c.replace(&key, &object, None).await?
                }
                None => {
                    if label.is_empty() && remove_label.is_empty() {
                        bail!("nothing to update: give --label, --remove-label or -f FILE");
                    }
                    let mut labels = serde_json::Map::new();
                    for (k, v) in parse_pairs(&label)? {
                        labels.insert(k, Value::String(v));
                    }
                    for k in remove_label {
                        labels.insert(k, Value::Null);
                    }
                    c.patch(&key, &json!({ "labels": labels }), None).await?
                }
            };
            output::show(out, &serde_json::to_value(updated)?, Some(kind))
        }
        ObjectCommand::Delete(DeleteArgs { key, cascade }) => {
            let revision = c.delete(kind, &Key::parse(kind, &key), cascade).await?;
            output::show(out, &json!({ "deleted": key, "revision": revision }), None)
        }
    }
}

/// A replace body needs the object's name (and project): take them from the key when the file
/// leaves them out.
fn fill_identity(value: &mut Value, key: &Key) {
    let Value::Object(map) = value else { return };
    match key {
        Key::Name(name) => {
            map.entry("name").or_insert_with(|| Value::String(name.clone()));
        }
        Key::Named { project, name } => {
            map.entry("name").or_insert_with(|| Value::String(name.clone()));
            map.entry("project").or_insert_with(|| Value::String(project.clone()));
        }
        Key::Id(_) => {}
    }
}

fn read_file(path: &PathBuf) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(_) => serde_yaml::from_str(&text).with_context(|| format!("{} is neither JSON nor YAML", path.display())),
    }
}

fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("{p:?} is not KEY=VALUE"),
        })
        .collect()
}

/// `project/name` → (project, name).
fn split_key(key: &str) -> anyhow::Result<(String, String)> {
    match key.split_once('/') {
        Some((p, n)) => Ok((p.to_string(), n.to_string())),
        None => bail!("{key:?}: name it as project/name"),
    }
}

/// The body from -f, or from the positional key and flags.
fn base_body(source: &ObjectSource, project_scoped: bool) -> anyhow::Result<Value> {
    let ObjectSource { file, key, label: labels } = source;
    let key = key.as_deref();
    let mut value = match file {
        Some(f) => read_file(f)?,
        None => json!({}),
    };
    if let Some(key) = key {
        let map = value.as_object_mut().context("the file must hold one object")?;
        if project_scoped {
            let (project, name) = split_key(key)?;
            map.insert("project".into(), Value::String(project));
            map.insert("name".into(), Value::String(name));
        } else {
            map.insert("name".into(), Value::String(key.to_string()));
        }
    } else if file.is_none() {
        bail!("give the object's name or -f FILE");
    }
    if !labels.is_empty() {
        value["labels"] = serde_json::to_value(parse_pairs(labels)?)?;
    }
    Ok(value)
}

fn project_body(a: &ProjectCreate) -> anyhow::Result<Value> {
    base_body(&a.source, false)
}

fn network_body(a: &NetworkCreate) -> anyhow::Result<Value> {
    let mut v = base_body(&a.source, true)?;
    if !a.subnet.is_empty() {
        let subnets: Vec<Value> = a
            .subnet
            .iter()
            .map(|s| {
                let mut parts = s.split(',');
                let cidr = parts.next().unwrap_or_default();
                let mut subnet = json!({ "cidr": cidr });
                for part in parts {
                    match part.split_once('=') {
                        Some(("gateway", gw)) => subnet["gateway"] = Value::String(gw.to_string()),
                        _ => bail!("{part:?} in --subnet: only gateway=IP may follow the CIDR"),
                    }
                }
                Ok(subnet)
            })
            .collect::<anyhow::Result<_>>()?;
        v["subnets"] = Value::Array(subnets);
    }
    Ok(v)
}

fn cluster_policy_body(a: &ClusterPolicyCreate) -> anyhow::Result<Value> {
    let mut v = base_body(&a.source, false)?;
    if let Some(tier) = &a.tier {
        v["tier"] = Value::String(tier.clone());
    }
    if let Some(priority) = a.priority {
        v["priority"] = json!(priority);
    }
    for (field, selector) in [("ports", &a.ports), ("projects", &a.projects)] {
        if let Some(s) = selector {
            let selector = weft_model::LabelSelector::parse(s)?;
            if !v["subject"].is_object() {
                v["subject"] = json!({});
            }
            v["subject"][field] = serde_json::to_value(selector)?;
        }
    }
    if v.get("subject").is_none() {
        v["subject"] = json!({});
    }
    Ok(v)
}

fn sg_body(a: &SgCreate) -> anyhow::Result<Value> {
    let mut v = base_body(&a.source, true)?;
    if let Some(s) = &a.selector {
        let selector = weft_model::LabelSelector::parse(s)?;
        v["selector"] = serde_json::to_value(selector)?;
    }
    if !a.policy_types.is_empty() {
        v["policy_types"] = serde_json::to_value(&a.policy_types)?;
    }
    Ok(v)
}

fn port_body(a: &PortCreate) -> anyhow::Result<Value> {
    let mut v = base_body(&a.source, true)?;
    for (field, value) in [("node", &a.node), ("network", &a.network), ("mac", &a.mac), ("interface", &a.interface)] {
        if let Some(value) = value {
            v[field] = Value::String(value.clone());
        }
    }
    if !a.ip.is_empty() {
        v["ips"] = serde_json::to_value(&a.ip)?;
    }
    if a.no_security_groups {
        v["security_groups"] = json!([]);
    } else if !a.security_groups.is_empty() {
        v["security_groups"] = serde_json::to_value(&a.security_groups)?;
    }
    if !a.named_port.is_empty() {
        let mut named = serde_json::Map::new();
        for np in &a.named_port {
            let parsed = np
                .split_once('=')
                .and_then(|(name, rest)| rest.split_once('/').map(|(proto, port)| (name, proto, port)))
                .and_then(|(name, proto, port)| port.parse::<i64>().ok().map(|p| (name, proto, p)));
            let Some((name, proto, port)) = parsed else { bail!("{np:?} is not NAME=PROTOCOL/PORT, like http=tcp/80") };
            named.insert(name.to_string(), json!({ "protocol": proto, "port": port }));
        }
        v["named_ports"] = Value::Object(named);
    }
    Ok(v)
}

/// An edit of a group's rules, applied to the group as read.
type RuleEdit = Box<dyn Fn(&mut SecurityGroup) -> anyhow::Result<()>>;

async fn rule(c: &Client, out: Output, command: RuleCommand) -> anyhow::Result<()> {
    let (group_key, edit): (String, RuleEdit) = match command {
        RuleCommand::Add(add) => {
            let rule = rule_from_flags(&add)?;
            (
                add.group.clone(),
                Box::new(move |sg: &mut SecurityGroup| {
                    sg.rules.push(rule.clone());
                    Ok(())
                }),
            )
        }
        RuleCommand::Remove { group, rule_id } => (
            group,
            Box::new(move |sg: &mut SecurityGroup| {
                let before = sg.rules.len();
                sg.rules.retain(|r| r.id != Some(rule_id));
                if sg.rules.len() == before {
                    bail!("the group has no rule {rule_id}");
                }
                Ok(())
            }),
        ),
    };
    let key = Key::parse(Kind::SecurityGroup, &group_key);
    // Read, edit, write back with If-Match; retry when someone else changed the group between.
    for _ in 0..5 {
        let mut sg: SecurityGroup = c.get(&key).await?;
        let revision = sg.revision;
        edit(&mut sg)?;
        match c.replace(&key, &sg, revision).await {
            Ok(updated) => return output::show(out, &serde_json::to_value(updated)?, Some(Kind::SecurityGroup)),
            Err(weft_client::ClientError::Api(p)) if p.status == 412 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("the group kept changing while the rule was being edited; try again")
}

fn rule_from_flags(a: &RuleAdd) -> anyhow::Result<weft_model::Rule> {
    let mut rule = json!({ "direction": a.direction, "protocol": a.protocol });
    if let Some(e) = &a.ethertype {
        rule["ethertype"] = Value::String(e.clone());
    }
    if !a.ports.is_empty() {
        let ports: Vec<Value> = a
            .ports
            .iter()
            .map(|p| {
                if let Ok(n) = p.parse::<i64>() {
                    json!(n)
                } else if let Some((from, to)) =
                    p.split_once('-').and_then(|(f, t)| Some((f.parse::<i64>().ok()?, t.parse::<i64>().ok()?)))
                {
                    json!({ "from": from, "to": to })
                } else {
                    json!(p)
                }
            })
            .collect();
        rule["ports"] = Value::Array(ports);
    }
    if let Some(icmp) = &a.icmp {
        let (t, code) = match icmp.split_once('/') {
            Some((t, c)) => (t, Some(c)),
            None => (icmp.as_str(), None),
        };
        let t: i64 = t.parse().context("--icmp takes TYPE or TYPE/CODE")?;
        rule["icmp"] = match code {
            Some(c) => json!({ "type": t, "code": c.parse::<i64>().context("--icmp takes TYPE or TYPE/CODE")? }),
            None => json!({ "type": t }),
        };
    }
    rule["remote"] = if let Some(cidr) = &a.remote_cidr {
        json!({ "type": "cidr", "cidr": cidr, "except": a.except })
    } else if let Some(sg) = &a.remote_sg {
        json!({ "type": "security_group", "security_group": sg })
    } else if let Some(sel) = &a.remote_selector {
        let mut remote = json!({ "type": "selector", "ports": weft_model::LabelSelector::parse(sel)? });
        if let Some(p) = &a.remote_projects {
            remote["projects"] = serde_json::to_value(weft_model::LabelSelector::parse(p)?)?;
        }
        remote
    } else {
        json!({ "type": "any" })
    };
    Ok(serde_json::from_value(rule)?)
}

async fn flows(c: &Client, out: Output, query: &[(&str, String)], last: u32, follow: bool) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut first = query.to_vec();
    first.push(("limit", last.max(1).to_string()));
    let shown = if last == 0 { Vec::new() } else { c.flows(&first).await? };
    let mut since_id = shown.last().map_or(0, |f| f.id);
    for flow in &shown {
        output::show_flow(out, flow)?;
    }
    if !follow {
        return Ok(());
    }
    if since_id == 0 {
        // Nothing shown: from the newest on.
        let newest: Vec<(&str, String)> = vec![("limit", "1".into())];
        since_id = c.flows(&newest).await?.last().map_or(0, |f| f.id);
    }
    let mut stream = Box::pin(c.watch_flows(query, since_id).await?);
    while let Some(flow) = stream.next().await {
        output::show_flow(out, &flow?)?;
    }
    Ok(())
}

async fn changes(c: &Client, out: Output, since: i64, watch: bool) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut stream = Box::pin(c.changes(since, watch).await?);
    while let Some(event) = stream.next().await {
        let event = event?;
        if let Some(problem) = event.error {
            return Err(weft_client::ClientError::Api(problem).into());
        }
        output::show_change(out, &event)?;
    }
    Ok(())
}

async fn node(c: &Client, out: Output, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Create { name } => output::show(out, &c.create_node(&name).await?, None),
        NodeCommand::List => output::show_nodes(out, &c.list_nodes().await?),
        NodeCommand::Delete { name } => {
            c.delete_node(&name).await?;
            output::show(out, &json!({ "deleted": name }), None)
        }
    }
}

/// Polls the realization of `revision` until it is complete, or fails at the timeout naming
/// the nodes that have not applied it.
async fn wait(c: &Client, out: Output, revision: i64, timeout: Duration) -> anyhow::Result<()> {
    let realization = realized(c, revision, timeout).await?;
    output::show(out, &serde_json::to_value(&realization)?, None)
}

/// Waits until every node `revision` concerns has applied it; fails at `timeout` naming who
/// has not, and fails at once when a node applied it but refuses part of what it was sent
/// (its datapath is then not what the configuration says, and no wait will change that).
pub async fn realized(c: &Client, revision: i64, timeout: Duration) -> anyhow::Result<weft_client::Realization> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let realization = c.realization(revision).await?;
        if realization.complete {
            if !realization.refusing.is_empty() {
                anyhow::bail!(
                    "revision {revision} is applied, but {} refuse part of it:\n  {}",
                    realization.refusing.join(", "),
                    realization.problems().join("\n  ")
                );
            }
            return Ok(realization);
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting = if realization.compiled < revision {
                format!("the controller is at revision {}", realization.compiled)
            } else {
                format!("not applied by {}", realization.laggards.join(", "))
            };
            anyhow::bail!("revision {revision} not realized within {timeout:?}: {waiting}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn token(c: &Client, out: Output, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { role, project, description, expires_in } => {
            let created = c.create_token(&role, project.as_deref(), &description, expires_in).await?;
            output::show(out, &serde_json::to_value(created)?, None)
        }
        TokenCommand::List => output::show_tokens(out, &serde_json::to_value(c.list_tokens().await?)?),
        TokenCommand::Revoke { id } => {
            c.revoke_token(id).await?;
            output::show(out, &json!({ "revoked": id }), None)
        }
    }
}

/// Writes a secret to a new file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
