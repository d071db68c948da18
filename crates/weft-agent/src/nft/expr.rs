//! A rule's statements, typed: the few forms the render writes. They become bytecode for
//! the kernel ([`super::bytecode`]) and, only when asked, nft JSON (a transaction sent
//! through nft, a dump, an error message).
//!
//! Why not build nft JSON directly: a full apply renders thousands of rules, and a
//! `serde_json::Value` tree is a few dozen allocations a rule; building, printing and walking
//! them was most of the render's time.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

/// A packet field, named as nft names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{"payload": {"protocol": _, "field": _}}`, e.g. `ip saddr`, `th dport`.
    Payload(&'static str, &'static str),
    /// `{"meta": {"key": _}}`, e.g. `iifname`, `l4proto`.
    Meta(&'static str),
    /// `ct state`.
    CtState,
}

/// The left side of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    Field(Field),
    /// Fields one after the other, as a concatenated set's key.
    Concat(Vec<Field>),
    /// A field under a mask of flag names: `tcp flags & (fin|syn|rst|ack)`.
    Masked(Field, &'static [&'static str]),
    /// The packet's mark under a mask of bits: `meta mark & 0x01000000`.
    MarkBits(u32),
}

/// The right side of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Right {
    Number(u64),
    /// A symbolic value: `ipv4`, `syn`, `new`, an interface name (`weft*` matches a prefix).
    Name(String),
    /// Flags: any of them (with [`Op::In`]).
    Names(&'static [&'static str]),
    Addr(IpAddr),
    Prefix(IpNet),
    Range(u64, u64),
    /// A named set (or map) of the table.
    Set(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    /// Any of the flags on the right.
    In,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    Match {
        op: Op,
        left: Left,
        right: Right,
    },
    /// `<key> vmap @<map>`: the verdict the map holds for the key.
    Vmap {
        key: Field,
        map: String,
    },
    Counter,
    Accept,
    Drop,
    Jump(String),
    /// Back to the chain that jumped here.
    Return,
    /// `meta mark set meta mark & and ^ xor`: clears (`and` without the bit) or sets (`xor`
    /// with it) bits of the packet's mark, keeping the others.
    Mark {
        and: u32,
        xor: u32,
    },
    /// Source NAT to the address of the interface the packet leaves by (a nat chain's).
    Masquerade,
    /// Matches while packets come at most `per_second` a second (and `burst` at once): a
    /// token bucket of the kernel's.
    Limit {
        per_second: u64,
        burst: u32,
    },
    /// Sends the packet (its first `snaplen` bytes) to nfnetlink_log group `group`, tagged with
    /// `prefix` (at most 127 bytes).
    Log {
        group: u16,
        prefix: String,
        snaplen: u32,
    },
}

impl Field {
    fn to_json(self) -> Value {
        match self {
            Field::Payload(protocol, field) => json!({"payload": {"protocol": protocol, "field": field}}),
            Field::Meta(key) => json!({"meta": {"key": key}}),
            Field::CtState => json!({"ct": {"key": "state"}}),
        }
    }
}

impl Left {
    fn to_json(&self) -> Value {
        match self {
            Left::Field(f) => f.to_json(),
            Left::Concat(fields) => json!({"concat": fields.iter().map(|f| f.to_json()).collect::<Vec<_>>()}),
            Left::Masked(f, names) => json!({"&": [f.to_json(), names]}),
            Left::MarkBits(bits) => json!({"&": [{"meta": {"key": "mark"}}, bits]}),
        }
    }
}

impl Right {
    fn to_json(&self) -> Value {
        match self {
            Right::Number(n) => json!(n),
            Right::Name(s) => json!(s),
            Right::Names(names) => json!(names),
            Right::Addr(a) => json!(a.to_string()),
            Right::Prefix(p) => json!({"prefix": {"addr": p.network().to_string(), "len": p.prefix_len()}}),
            Right::Range(lo, hi) => json!({"range": [lo, hi]}),
            Right::Set(name) => json!(format!("@{name}")),
        }
    }
}

impl Stmt {
    /// The statement in nft's JSON form.
    pub fn to_json(&self) -> Value {
        match self {
            Stmt::Match { op, left, right } => {
                let op = match op {
                    Op::Eq => "==",
                    Op::Ne => "!=",
                    Op::In => "in",
                };
                json!({"match": {"op": op, "left": left.to_json(), "right": right.to_json()}})
            }
            Stmt::Vmap { key, map } => json!({"vmap": {"key": key.to_json(), "data": format!("@{map}")}}),
            Stmt::Counter => json!({"counter": null}),
            Stmt::Accept => json!({"accept": null}),
            Stmt::Drop => json!({"drop": null}),
            Stmt::Jump(target) => json!({"jump": {"target": target}}),
            Stmt::Return => json!({"return": null}),
            Stmt::Mark { and, xor } => {
                let mark = json!({"meta": {"key": "mark"}});
                json!({"mangle": {"key": mark, "value": {"^": [{"&": [mark, and]}, xor]}}})
            }
            Stmt::Masquerade => json!({"masquerade": null}),
            Stmt::Limit { per_second, burst } => {
                json!({"limit": {"rate": per_second, "burst": burst, "per": "second"}})
            }
            Stmt::Log { group, prefix, snaplen } => {
                json!({"log": {"prefix": prefix, "group": group, "snaplen": snaplen}})
            }
        }
    }
}

/// Statements as nft JSON text: an array of statements.
pub fn to_json_text(stmts: &[Stmt]) -> String {
    Value::Array(stmts.iter().map(Stmt::to_json).collect()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_nft_json() {
        let stmts = [
            Stmt::Match {
                op: Op::Ne,
                left: Left::Concat(vec![Field::Meta("iifname"), Field::Payload("ip", "saddr")]),
                right: Right::Set("spoof-4".into()),
            },
            Stmt::Match { op: Op::In, left: Left::Field(Field::CtState), right: Right::Names(&["established"]) },
            Stmt::Counter,
            Stmt::Jump("pi-x".into()),
        ];
        assert_eq!(
            to_json_text(&stmts),
            r#"[{"match":{"left":{"concat":[{"meta":{"key":"iifname"}},{"payload":{"field":"saddr","protocol":"ip"}}]},"op":"!=","right":"@spoof-4"}},{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established"]}},{"counter":null},{"jump":{"target":"pi-x"}}]"#
        );
    }
}
