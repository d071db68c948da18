//! A rule's nft JSON expressions as nf_tables bytecode: the list of expressions (payload and
//! meta loads, comparisons, set lookups, verdicts) the kernel runs, encoded as the netlink
//! attribute `NFTA_RULE_EXPRESSIONS` carries them.
//!
//! Only the forms [`super::render`] writes are understood; anything else is an error naming
//! it. The bytecode is what nft itself generates for the same JSON (`nft -d netlink` shows
//! it), including the implicit matches nft adds: `ip saddr` only for IPv4 packets, `tcp
//! flags` only for TCP, and so on; an implicit match the rule already made is not repeated.
//! nft reads such a rule back as the same expressions, so `nft list` shows what weft wrote.

use std::net::IpAddr;

use serde_json::Value;

use super::netlink::{attr, c_string};

const NLA_F_NESTED: u16 = 0x8000;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG32_00: u32 = 8;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;

pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// conntrack states as `ct state` bits (host byte order in the register).
fn ct_state_bit(name: &str) -> Option<u32> {
    Some(match name {
        "invalid" => 1,
        "established" => 2,
        "related" => 4,
        "new" => 8,
        "untracked" => 64,
        _ => return None,
    })
}

fn tcp_flag_bit(name: &str) -> Option<u8> {
    Some(match name {
        "fin" => 0x01,
        "syn" => 0x02,
        "rst" => 0x04,
        "psh" => 0x08,
        "ack" => 0x10,
        "urg" => 0x20,
        "ecn" => 0x40,
        "cwr" => 0x80,
        _ => return None,
    })
}

/// How a field's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addr {
        v6: bool,
    },
    /// A 16-bit port, big-endian.
    Port,
    /// One byte: a protocol number, an ICMP type or code.
    Byte,
    NfProto,
    Ifname,
    TcpFlags,
    CtState,
}

#[derive(Debug, Clone, Copy)]
enum Load {
    Payload { base: u32, offset: u32 },
    Meta(u32),
    Ct(u32),
}

/// A packet field: where it is loaded from, its length in bytes, how its values are written,
/// and the match it needs first (nfproto or l4proto).
#[derive(Debug, Clone, Copy)]
struct Field {
    load: Load,
    len: u32,
    kind: Kind,
    needs: Option<Need>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    NfProto(u8),
    L4Proto(u8),
}

fn field(v: &Value) -> Result<Field, String> {
    if let Some(p) = v.get("payload") {
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or_default();
        let name = p.get("field").and_then(Value::as_str).unwrap_or_default();
        let network = |offset, len, v6| Field {
            load: Load::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset },
            len,
            kind: Kind::Addr { v6 },
            needs: Some(Need::NfProto(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 })),
        };
        let transport = |offset, len, kind, needs| Field {
            load: Load::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset },
            len,
            kind,
            needs,
        };
        return Ok(match (protocol, name) {
            ("ip", "saddr") => network(12, 4, false),
            ("ip", "daddr") => network(16, 4, false),
            ("ip6", "saddr") => network(8, 16, true),
            ("ip6", "daddr") => network(24, 16, true),
            ("th", "sport") => transport(0, 2, Kind::Port, None),
            ("th", "dport") => transport(2, 2, Kind::Port, None),
            ("tcp", "sport") => transport(0, 2, Kind::Port, Some(Need::L4Proto(6))),
            ("tcp", "dport") => transport(2, 2, Kind::Port, Some(Need::L4Proto(6))),
            ("tcp", "flags") => transport(13, 1, Kind::TcpFlags, Some(Need::L4Proto(6))),
            ("icmp", "type") => transport(0, 1, Kind::Byte, Some(Need::L4Proto(1))),
            ("icmp", "code") => transport(1, 1, Kind::Byte, Some(Need::L4Proto(1))),
            ("icmpv6", "type") => transport(0, 1, Kind::Byte, Some(Need::L4Proto(58))),
            ("icmpv6", "code") => transport(1, 1, Kind::Byte, Some(Need::L4Proto(58))),
            _ => return Err(format!("payload {protocol} {name}")),
        });
    }
    if let Some(m) = v.get("meta") {
        let key = m.get("key").and_then(Value::as_str).unwrap_or_default();
        let meta = |k, len, kind| Field { load: Load::Meta(k), len, kind, needs: None };
        return Ok(match key {
            "iifname" => meta(NFT_META_IIFNAME, 16, Kind::Ifname),
            "oifname" => meta(NFT_META_OIFNAME, 16, Kind::Ifname),
            "nfproto" => meta(NFT_META_NFPROTO, 1, Kind::NfProto),
            "l4proto" => meta(NFT_META_L4PROTO, 1, Kind::Byte),
            _ => return Err(format!("meta {key}")),
        });
    }
    if let Some(c) = v.get("ct") {
        return match c.get("key").and_then(Value::as_str) {
            Some("state") => Ok(Field { load: Load::Ct(NFT_CT_STATE), len: 4, kind: Kind::CtState, needs: None }),
            other => Err(format!("ct {other:?}")),
        };
    }
    Err(format!("a field {v}"))
}

/// A value of `kind`, as register bytes.
fn value(kind: Kind, v: &Value) -> Result<Vec<u8>, String> {
    let bad = || format!("a value {v} for {kind:?}");
    let number = || v.as_u64().ok_or_else(bad);
    Ok(match kind {
        Kind::Addr { v6 } => match v.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
            Some(IpAddr::V4(a)) if !v6 => a.octets().to_vec(),
            Some(IpAddr::V6(a)) if v6 => a.octets().to_vec(),
            _ => return Err(bad()),
        },
        Kind::Port => u16::try_from(number()?).map_err(|_| bad())?.to_be_bytes().to_vec(),
        Kind::Byte => match v.as_str() {
            Some("tcp") => vec![6],
            Some("udp") => vec![17],
            Some("sctp") => vec![132],
            Some("icmp") => vec![1],
            Some("ipv6-icmp" | "icmpv6") => vec![58],
            _ => vec![u8::try_from(number()?).map_err(|_| bad())?],
        },
        Kind::NfProto => match v.as_str() {
            Some("ipv4") => vec![NFPROTO_IPV4],
            Some("ipv6") => vec![NFPROTO_IPV6],
            _ => return Err(bad()),
        },
        Kind::Ifname => {
            let s = v.as_str().ok_or_else(bad)?;
            // `weft*` matches the name's first bytes; a whole name ends with its NUL.
            match s.strip_suffix('*') {
                Some(prefix) => prefix.as_bytes().to_vec(),
                None => c_string(s),
            }
        }
        Kind::TcpFlags => {
            let names: Vec<&str> = match v {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>().ok_or_else(bad)?,
                _ => return Err(bad()),
            };
            vec![names.iter().map(|n| tcp_flag_bit(n).ok_or_else(bad)).sum::<Result<u8, String>>()?]
        }
        Kind::CtState => {
            let names: Vec<&str> = match v {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>().ok_or_else(bad)?,
                _ => return Err(bad()),
            };
            let bits = names.iter().map(|n| ct_state_bit(n).ok_or_else(bad)).sum::<Result<u32, String>>()?;
            bits.to_ne_bytes().to_vec()
        }
    })
}

/// The register of the 32-bit word `word` of the register file, as nft numbers it: the
/// 16-byte registers where a value starts on one, else the 32-bit ones.
fn register(word: u32) -> u32 {
    if word.is_multiple_of(4) { NFT_REG_1 + word / 4 } else { NFT_REG32_00 + word }
}

fn u32_attr(out: &mut Vec<u8>, kind: u16, v: u32) {
    attr(out, kind, &v.to_be_bytes());
}

fn data_attr(out: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    let mut inner = Vec::new();
    attr(&mut inner, NFTA_DATA_VALUE, bytes);
    attr(out, kind | NLA_F_NESTED, &inner);
}

/// A verdict as `NFTA_*_DATA` carries it (also a map element's data).
pub fn verdict_data(code: i32, chain: Option<&str>) -> Vec<u8> {
    let mut verdict = Vec::new();
    attr(&mut verdict, NFTA_VERDICT_CODE, &code.to_be_bytes());
    if let Some(chain) = chain {
        attr(&mut verdict, NFTA_VERDICT_CHAIN, &c_string(chain));
    }
    let mut data = Vec::new();
    attr(&mut data, NFTA_DATA_VERDICT | NLA_F_NESTED, &verdict);
    data
}

pub fn jump_code() -> i32 {
    NFT_JUMP
}

/// The expressions of one rule, as they are written.
#[derive(Default)]
struct Program {
    out: Vec<u8>,
    /// What the rule has matched so far: implicit matches already made are not repeated.
    nfproto: Option<u8>,
    l4proto: Option<u8>,
}

impl Program {
    fn expr(&mut self, name: &str, data: &[u8]) {
        let mut e = Vec::new();
        attr(&mut e, NFTA_EXPR_NAME, &c_string(name));
        attr(&mut e, NFTA_EXPR_DATA | NLA_F_NESTED, data);
        attr(&mut self.out, NFTA_LIST_ELEM | NLA_F_NESTED, &e);
    }

    fn load(&mut self, f: &Field, reg: u32) {
        let mut d = Vec::new();
        match f.load {
            Load::Payload { base, offset } => {
                u32_attr(&mut d, NFTA_PAYLOAD_DREG, reg);
                u32_attr(&mut d, NFTA_PAYLOAD_BASE, base);
                u32_attr(&mut d, NFTA_PAYLOAD_OFFSET, offset);
                u32_attr(&mut d, NFTA_PAYLOAD_LEN, f.len);
                self.expr("payload", &d);
            }
            Load::Meta(key) => {
                u32_attr(&mut d, NFTA_META_KEY, key);
                u32_attr(&mut d, NFTA_META_DREG, reg);
                self.expr("meta", &d);
            }
            Load::Ct(key) => {
                u32_attr(&mut d, NFTA_CT_KEY, key);
                u32_attr(&mut d, NFTA_CT_DREG, reg);
                self.expr("ct", &d);
            }
        }
    }

    fn cmp(&mut self, op: u32, bytes: &[u8]) {
        let mut d = Vec::new();
        u32_attr(&mut d, NFTA_CMP_SREG, NFT_REG_1);
        u32_attr(&mut d, NFTA_CMP_OP, op);
        data_attr(&mut d, NFTA_CMP_DATA, bytes);
        self.expr("cmp", &d);
    }

    /// reg1 = (reg1 & mask) ^ 0, over the mask's length.
    fn mask(&mut self, mask: &[u8]) {
        let mut d = Vec::new();
        u32_attr(&mut d, NFTA_BITWISE_SREG, NFT_REG_1);
        u32_attr(&mut d, NFTA_BITWISE_DREG, NFT_REG_1);
        u32_attr(&mut d, NFTA_BITWISE_LEN, mask.len() as u32);
        data_attr(&mut d, NFTA_BITWISE_MASK, mask);
        data_attr(&mut d, NFTA_BITWISE_XOR, &vec![0; mask.len()]);
        self.expr("bitwise", &d);
    }

    fn lookup(&mut self, set: &str, dreg: Option<u32>, inverted: bool) {
        let mut d = Vec::new();
        attr(&mut d, NFTA_LOOKUP_SET, &c_string(set));
        u32_attr(&mut d, NFTA_LOOKUP_SREG, NFT_REG_1);
        if let Some(dreg) = dreg {
            u32_attr(&mut d, NFTA_LOOKUP_DREG, dreg);
        }
        if inverted {
            u32_attr(&mut d, NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
        }
        self.expr("lookup", &d);
    }

    fn verdict(&mut self, code: i32, chain: Option<&str>) {
        let mut d = Vec::new();
        u32_attr(&mut d, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        attr(&mut d, NFTA_IMMEDIATE_DATA | NLA_F_NESTED, &verdict_data(code, chain));
        self.expr("immediate", &d);
    }

    /// The implicit match a field needs, unless the rule made it already.
    fn require(&mut self, need: Option<Need>) {
        match need {
            Some(Need::NfProto(p)) if self.nfproto != Some(p) => {
                self.load(&Field { load: Load::Meta(NFT_META_NFPROTO), len: 1, kind: Kind::NfProto, needs: None }, 1);
                self.cmp(NFT_CMP_EQ, &[p]);
                self.nfproto = Some(p);
            }
            Some(Need::L4Proto(p)) if self.l4proto != Some(p) => {
                self.load(&Field { load: Load::Meta(NFT_META_L4PROTO), len: 1, kind: Kind::Byte, needs: None }, 1);
                self.cmp(NFT_CMP_EQ, &[p]);
                self.l4proto = Some(p);
            }
            _ => {}
        }
    }

    /// Loads the left side of a match into the registers from reg 1: one field, a
    /// concatenation of fields (each on whole 32-bit words), or a field under a mask.
    /// Returns the field (the last of a concatenation) whose kind types the right side.
    fn left(&mut self, left: &Value) -> Result<Field, String> {
        if let Some(parts) = left.get("concat").and_then(Value::as_array) {
            let fields = parts.iter().map(field).collect::<Result<Vec<_>, _>>()?;
            for f in &fields {
                self.require(f.needs);
            }
            let mut word = 0;
            for f in &fields {
                self.load(f, register(word));
                word += f.len.div_ceil(4);
            }
            return fields.last().copied().ok_or_else(|| "an empty concatenation".to_string());
        }
        if let Some([inner, mask]) = left.get("&").and_then(Value::as_array).map(Vec::as_slice) {
            let f = field(inner)?;
            self.require(f.needs);
            self.load(&f, NFT_REG_1);
            self.mask(&value(f.kind, mask)?);
            return Ok(f);
        }
        let f = field(left)?;
        self.require(f.needs);
        self.load(&f, NFT_REG_1);
        Ok(f)
    }

    fn matches(&mut self, m: &Value) -> Result<(), String> {
        let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
        let (left, right) =
            (m.get("left").ok_or("a match without left")?, m.get("right").ok_or("a match without right")?);
        let negated = match op {
            "==" | "in" => false,
            "!=" => true,
            other => return Err(format!("match op {other}")),
        };
        let f = self.left(left)?;
        if let Some(set) = right.as_str().and_then(|s| s.strip_prefix('@')) {
            self.lookup(set, None, negated);
            return Ok(());
        }
        // A flag type matched with `in`: any of the flags is set.
        if op == "in" && matches!(f.kind, Kind::CtState | Kind::TcpFlags) {
            let mask = value(f.kind, right)?;
            self.mask(&mask);
            self.cmp(NFT_CMP_NEQ, &vec![0; mask.len()]);
            return Ok(());
        }
        if let Some([lo, hi]) = right.get("range").and_then(Value::as_array).map(Vec::as_slice) {
            if negated {
                return Err("a negated range".into());
            }
            self.cmp(NFT_CMP_GTE, &value(f.kind, lo)?);
            self.cmp(NFT_CMP_LTE, &value(f.kind, hi)?);
            return Ok(());
        }
        if let Some(p) = right.get("prefix") {
            let addr = value(f.kind, p.get("addr").ok_or("a prefix without addr")?)?;
            let len = p.get("len").and_then(Value::as_u64).ok_or("a prefix without len")? as usize;
            let mask: Vec<u8> = (0..addr.len())
                .map(|i| {
                    let bits = len.saturating_sub(i * 8).min(8);
                    (0xffu16 << (8 - bits)) as u8
                })
                .collect();
            let network: Vec<u8> = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
            self.mask(&mask);
            self.cmp(if negated { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &network);
            return Ok(());
        }
        let bytes = value(f.kind, right)?;
        self.cmp(if negated { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &bytes);
        if !negated && f.len == 1 {
            // A plain match on nfproto or l4proto is what later fields may need.
            match f.load {
                Load::Meta(NFT_META_NFPROTO) => self.nfproto = bytes.first().copied(),
                Load::Meta(NFT_META_L4PROTO) => self.l4proto = bytes.first().copied(),
                _ => {}
            }
        }
        Ok(())
    }

    fn statement(&mut self, s: &Value) -> Result<(), String> {
        let Some((name, body)) = s.as_object().and_then(|o| o.iter().next()) else {
            return Err(format!("a statement {s}"));
        };
        match name.as_str() {
            "match" => self.matches(body),
            "counter" => {
                self.expr("counter", &[]);
                Ok(())
            }
            "accept" => {
                self.verdict(NF_ACCEPT, None);
                Ok(())
            }
            "drop" => {
                self.verdict(NF_DROP, None);
                Ok(())
            }
            "jump" => {
                let target = body.get("target").and_then(Value::as_str).ok_or("a jump without target")?;
                self.verdict(NFT_JUMP, Some(target));
                Ok(())
            }
            "vmap" => {
                let key = body.get("key").ok_or("a vmap without key")?;
                let map = body.get("data").and_then(Value::as_str).and_then(|s| s.strip_prefix('@'));
                let map = map.ok_or("a vmap without a named map")?;
                self.left(key)?;
                self.lookup(map, Some(NFT_REG_VERDICT), false);
                Ok(())
            }
            other => Err(format!("a statement {other}")),
        }
    }
}

/// The rule's expressions as the payload of `NFTA_RULE_EXPRESSIONS`.
pub fn compile(statements: &[Value]) -> Result<Vec<u8>, String> {
    let mut program = Program::default();
    for s in statements {
        program.statement(s)?;
    }
    Ok(program.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The expression names of a compiled rule, in order.
    fn names(bytes: &[u8]) -> Vec<String> {
        super::super::netlink::attributes(bytes)
            .into_iter()
            .filter_map(|(_, elem, _)| {
                let (_, name, _) = super::super::netlink::attributes(elem).into_iter().next()?;
                Some(String::from_utf8_lossy(name).trim_end_matches('\0').to_string())
            })
            .collect()
    }

    #[test]
    fn an_address_match_needs_its_family_once() {
        let rule = [
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@s-4"}}),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}),
            json!({"counter": null}),
            json!({"accept": null}),
        ];
        let bytes = compile(&rule).expect("compiles");
        assert_eq!(
            names(&bytes),
            ["meta", "cmp", "payload", "lookup", "payload", "bitwise", "cmp", "counter", "immediate"]
        );
    }

    #[test]
    fn tcp_flags_need_tcp_and_ranges_are_two_comparisons() {
        let flags = json!({"match": {"op": "!=", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}},
            ["fin", "syn", "rst", "ack"]]}, "right": "syn"}});
        assert_eq!(names(&compile(&[flags]).expect("compiles")), ["meta", "cmp", "payload", "bitwise", "cmp"]);
        let range = json!({"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
            "right": {"range": [1000, 2000]}}});
        let bytes = compile(&[range]).expect("compiles");
        assert_eq!(names(&bytes), ["payload", "cmp", "cmp"]);
        assert!(bytes.windows(2).any(|w| w == 1000u16.to_be_bytes()), "ports are big-endian");
    }

    #[test]
    fn what_it_does_not_know_is_an_error_naming_it() {
        let err = compile(&[json!({"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 1}})])
            .expect_err("meta mark is not written by render");
        assert!(err.contains("meta mark"), "{err}");
        assert!(compile(&[json!({"log": null})]).is_err());
    }

    #[test]
    fn registers_are_numbered_as_nft_numbers_them() {
        assert_eq!([register(0), register(1), register(2), register(4), register(5)], [1, 9, 10, 2, 13]);
    }
}
