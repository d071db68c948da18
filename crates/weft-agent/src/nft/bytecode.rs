//! A rule's statements ([`super::expr`]) as nf_tables bytecode: the list of expressions
//! (payload and meta loads, comparisons, set lookups, verdicts) the kernel runs, encoded as
//! the netlink attribute `NFTA_RULE_EXPRESSIONS` carries them.
//!
//! The bytecode is what nft itself generates for the same statements (`nft -d netlink` shows
//! it), including the implicit matches nft adds: `ip saddr` only for IPv4 packets, `tcp
//! flags` only for TCP, and so on; an implicit match the rule already made is not repeated.
//! nft reads such a rule back as the same expressions, so `nft list` shows what weft wrote.
//! A field or value these statements cannot carry is an error naming it.

use std::net::IpAddr;

use super::expr::{Field, Left, Op, Right, Stmt};
use super::wire::{attr, attr_str, c_string, nest};

const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;

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
const NFTA_META_SREG: u16 = 3;
const NFT_META_MARK: u32 = 3;
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

const NFTA_LIMIT_RATE: u16 = 1;
const NFTA_LIMIT_UNIT: u16 = 2;
const NFTA_LIMIT_BURST: u16 = 3;
const NFTA_LIMIT_TYPE: u16 = 4;
const NFTA_LIMIT_FLAGS: u16 = 5;
const NFT_LIMIT_PKTS: u32 = 0;

const NFTA_LOG_GROUP: u16 = 1;
const NFTA_LOG_PREFIX: u16 = 2;
const NFTA_LOG_SNAPLEN: u16 = 3;

const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;

pub(super) const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
pub(super) const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;

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
    /// The packet's mark: a host-endian 32-bit word.
    Mark,
}

#[derive(Debug, Clone, Copy)]
enum Load {
    Payload { base: u32, offset: u32 },
    Meta(u32),
    Ct(u32),
}

/// Where a packet field is loaded from, its length in bytes, how its values are written, and
/// the match it needs first (nfproto or l4proto).
#[derive(Debug, Clone, Copy)]
struct Slot {
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

fn slot(f: Field) -> Result<Slot, String> {
    match f {
        Field::Payload(protocol, name) => {
            let network = |offset, len, v6| Slot {
                load: Load::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset },
                len,
                kind: Kind::Addr { v6 },
                needs: Some(Need::NfProto(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 })),
            };
            let transport = |offset, len, kind, needs| Slot {
                load: Load::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset },
                len,
                kind,
                needs,
            };
            Ok(match (protocol, name) {
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
            })
        }
        Field::Meta(key) => {
            let meta = |k, len, kind| Slot { load: Load::Meta(k), len, kind, needs: None };
            Ok(match key {
                "iifname" => meta(NFT_META_IIFNAME, 16, Kind::Ifname),
                "oifname" => meta(NFT_META_OIFNAME, 16, Kind::Ifname),
                "nfproto" => meta(NFT_META_NFPROTO, 1, Kind::NfProto),
                "l4proto" => meta(NFT_META_L4PROTO, 1, Kind::Byte),
                _ => return Err(format!("meta {key}")),
            })
        }
        Field::CtState => Ok(Slot { load: Load::Ct(NFT_CT_STATE), len: 4, kind: Kind::CtState, needs: None }),
    }
}

/// A value of `kind`, as register bytes.
fn value(kind: Kind, v: &Right) -> Result<Vec<u8>, String> {
    let bad = || format!("a value {v:?} for {kind:?}");
    // Flags, one or several, set together.
    let flags = |bit: &dyn Fn(&str) -> Option<u32>| -> Result<u32, String> {
        let names: &[&str] = match v {
            Right::Name(s) => &[s.as_str()],
            Right::Names(n) => n,
            _ => return Err(bad()),
        };
        names.iter().try_fold(0, |bits, n| Ok(bits | bit(n).ok_or_else(bad)?))
    };
    Ok(match (kind, v) {
        (Kind::Addr { v6 }, Right::Addr(a)) => match a {
            IpAddr::V4(a) if !v6 => a.octets().to_vec(),
            IpAddr::V6(a) if v6 => a.octets().to_vec(),
            _ => return Err(bad()),
        },
        (Kind::Port, Right::Number(n)) => u16::try_from(*n).map_err(|_| bad())?.to_be_bytes().to_vec(),
        (Kind::Byte, Right::Number(n)) => vec![u8::try_from(*n).map_err(|_| bad())?],
        (Kind::NfProto, Right::Name(s)) => match s.as_str() {
            "ipv4" => vec![NFPROTO_IPV4],
            "ipv6" => vec![NFPROTO_IPV6],
            _ => return Err(bad()),
        },
        // `weft*` matches the name's first bytes; a whole name ends with its NUL.
        (Kind::Ifname, Right::Name(s)) => match s.strip_suffix('*') {
            Some(prefix) => prefix.as_bytes().to_vec(),
            None => c_string(s),
        },
        (Kind::TcpFlags, _) => vec![flags(&|n| tcp_flag_bit(n).map(u32::from))? as u8],
        (Kind::CtState, _) => flags(&ct_state_bit)?.to_ne_bytes().to_vec(),
        (Kind::Mark, Right::Number(n)) => u32::try_from(*n).map_err(|_| bad())?.to_ne_bytes().to_vec(),
        _ => return Err(bad()),
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

/// A value as `NFTA_*_DATA` carries it (a comparison's operand, a set element's key).
pub(super) fn data_attr(out: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    nest(out, kind, |v| attr(v, NFTA_DATA_VALUE, bytes));
}

/// Zeros to compare or xor with: no value here is longer than an IPv6 address.
const ZEROS: [u8; 16] = [0; 16];

/// A verdict as `NFTA_*_DATA` carries it (an immediate's, a map element's), in `kind`.
pub(super) fn verdict_attr(out: &mut Vec<u8>, kind: u16, code: i32, chain: Option<&str>) {
    nest(out, kind, |d| {
        nest(d, NFTA_DATA_VERDICT, |v| {
            attr(v, NFTA_VERDICT_CODE, &code.to_be_bytes());
            if let Some(chain) = chain {
                attr_str(v, NFTA_VERDICT_CHAIN, chain);
            }
        })
    });
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
    /// One expression, written in place: its name, and its data as `body` writes it.
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
        nest(&mut self.out, NFTA_LIST_ELEM, |e| {
            attr_str(e, NFTA_EXPR_NAME, name);
            nest(e, NFTA_EXPR_DATA, body);
        });
    }

    fn load(&mut self, f: &Slot, reg: u32) {
        match f.load {
            Load::Payload { base, offset } => self.expr("payload", |d| {
                u32_attr(d, NFTA_PAYLOAD_DREG, reg);
                u32_attr(d, NFTA_PAYLOAD_BASE, base);
                u32_attr(d, NFTA_PAYLOAD_OFFSET, offset);
                u32_attr(d, NFTA_PAYLOAD_LEN, f.len);
            }),
            Load::Meta(key) => self.expr("meta", |d| {
                u32_attr(d, NFTA_META_KEY, key);
                u32_attr(d, NFTA_META_DREG, reg);
            }),
            Load::Ct(key) => self.expr("ct", |d| {
                u32_attr(d, NFTA_CT_KEY, key);
                u32_attr(d, NFTA_CT_DREG, reg);
            }),
        }
    }

    fn cmp(&mut self, op: u32, bytes: &[u8]) {
        self.expr("cmp", |d| {
            u32_attr(d, NFTA_CMP_SREG, NFT_REG_1);
            u32_attr(d, NFTA_CMP_OP, op);
            data_attr(d, NFTA_CMP_DATA, bytes);
        });
    }

    /// reg1 = (reg1 & mask) ^ 0, over the mask's length.
    fn mask(&mut self, mask: &[u8]) {
        self.bitwise(mask, &ZEROS[..mask.len().min(ZEROS.len())]);
    }

    /// reg1 = (reg1 & mask) ^ xor, over the mask's length.
    fn bitwise(&mut self, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |d| {
            u32_attr(d, NFTA_BITWISE_SREG, NFT_REG_1);
            u32_attr(d, NFTA_BITWISE_DREG, NFT_REG_1);
            u32_attr(d, NFTA_BITWISE_LEN, mask.len() as u32);
            data_attr(d, NFTA_BITWISE_MASK, mask);
            data_attr(d, NFTA_BITWISE_XOR, xor);
        });
    }

    /// The packet's mark into reg1 (a host-endian 32-bit word, as the kernel keeps it).
    fn load_mark(&mut self) {
        self.expr("meta", |d| {
            u32_attr(d, NFTA_META_KEY, NFT_META_MARK);
            u32_attr(d, NFTA_META_DREG, NFT_REG_1);
        });
    }

    fn lookup(&mut self, set: &str, dreg: Option<u32>, inverted: bool) {
        self.expr("lookup", |d| {
            attr_str(d, NFTA_LOOKUP_SET, set);
            u32_attr(d, NFTA_LOOKUP_SREG, NFT_REG_1);
            if let Some(dreg) = dreg {
                u32_attr(d, NFTA_LOOKUP_DREG, dreg);
            }
            if inverted {
                u32_attr(d, NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
    }

    fn verdict(&mut self, code: i32, chain: Option<&str>) {
        self.expr("immediate", |d| {
            u32_attr(d, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            verdict_attr(d, NFTA_IMMEDIATE_DATA, code, chain);
        });
    }

    /// The implicit match a field needs, unless the rule made it already.
    fn require(&mut self, need: Option<Need>) {
        match need {
            Some(Need::NfProto(p)) if self.nfproto != Some(p) => {
                self.load(&Slot { load: Load::Meta(NFT_META_NFPROTO), len: 1, kind: Kind::NfProto, needs: None }, 1);
                self.cmp(NFT_CMP_EQ, &[p]);
                self.nfproto = Some(p);
            }
            Some(Need::L4Proto(p)) if self.l4proto != Some(p) => {
                self.load(&Slot { load: Load::Meta(NFT_META_L4PROTO), len: 1, kind: Kind::Byte, needs: None }, 1);
                self.cmp(NFT_CMP_EQ, &[p]);
                self.l4proto = Some(p);
            }
            _ => {}
        }
    }

    /// Loads the left side of a match into the registers from reg 1: one field, a
    /// concatenation of fields (each on whole 32-bit words), or a field under a mask.
    /// Returns the field (the last of a concatenation) whose kind types the right side.
    fn left(&mut self, left: &Left) -> Result<Slot, String> {
        match left {
            Left::Concat(fields) => {
                let slots = fields.iter().map(|f| slot(*f)).collect::<Result<Vec<_>, _>>()?;
                for f in &slots {
                    self.require(f.needs);
                }
                let mut word = 0;
                for f in &slots {
                    self.load(f, register(word));
                    word += f.len.div_ceil(4);
                }
                slots.last().copied().ok_or_else(|| "an empty concatenation".to_string())
            }
            Left::Masked(field, mask) => {
                let f = slot(*field)?;
                self.require(f.needs);
                self.load(&f, NFT_REG_1);
                self.mask(&value(f.kind, &Right::Names(mask))?);
                Ok(f)
            }
            Left::Field(field) => {
                let f = slot(*field)?;
                self.require(f.needs);
                self.load(&f, NFT_REG_1);
                Ok(f)
            }
            Left::MarkBits(bits) => {
                self.load_mark();
                self.mask(&bits.to_ne_bytes());
                Ok(Slot { load: Load::Meta(NFT_META_MARK), len: 4, kind: Kind::Mark, needs: None })
            }
        }
    }

    fn matches(&mut self, op: Op, left: &Left, right: &Right) -> Result<(), String> {
        let negated = op == Op::Ne;
        let f = self.left(left)?;
        match right {
            Right::Set(set) => self.lookup(set, None, negated),
            // A flag type matched with `in`: any of the flags is set.
            _ if op == Op::In => {
                let mask = value(f.kind, right)?;
                self.mask(&mask);
                self.cmp(NFT_CMP_NEQ, &ZEROS[..mask.len().min(ZEROS.len())]);
            }
            Right::Range(lo, hi) => {
                if negated {
                    return Err("a negated range".into());
                }
                self.cmp(NFT_CMP_GTE, &value(f.kind, &Right::Number(*lo))?);
                self.cmp(NFT_CMP_LTE, &value(f.kind, &Right::Number(*hi))?);
            }
            Right::Prefix(p) => {
                let addr = value(f.kind, &Right::Addr(p.network()))?;
                let len = usize::from(p.prefix_len());
                let mask: Vec<u8> = (0..addr.len())
                    .map(|i| {
                        let bits = len.saturating_sub(i * 8).min(8);
                        (0xffu16 << (8 - bits)) as u8
                    })
                    .collect();
                self.mask(&mask);
                self.cmp(if negated { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &addr);
            }
            _ => {
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
            }
        }
        Ok(())
    }

    fn statement(&mut self, s: &Stmt) -> Result<(), String> {
        match s {
            Stmt::Match { op, left, right } => self.matches(*op, left, right)?,
            Stmt::Counter => self.expr("counter", |_| {}),
            Stmt::Accept => self.verdict(NF_ACCEPT, None),
            Stmt::Drop => self.verdict(NF_DROP, None),
            Stmt::Jump(target) => self.verdict(NFT_JUMP, Some(target)),
            Stmt::Return => self.verdict(NFT_RETURN, None),
            Stmt::Mark { and, xor } => {
                self.load_mark();
                self.bitwise(&and.to_ne_bytes(), &xor.to_ne_bytes());
                self.expr("meta", |d| {
                    u32_attr(d, NFTA_META_KEY, NFT_META_MARK);
                    u32_attr(d, NFTA_META_SREG, NFT_REG_1);
                });
            }
            // No flags, no port range: nft's own encoding of a plain `masquerade`.
            Stmt::Masquerade => self.expr("masq", |_| {}),
            // Rate in packets a second, as nft writes `limit rate N/second burst B packets`.
            Stmt::Limit { per_second, burst } => self.expr("limit", |d| {
                attr(d, NFTA_LIMIT_RATE, &per_second.to_be_bytes());
                attr(d, NFTA_LIMIT_UNIT, &1u64.to_be_bytes());
                u32_attr(d, NFTA_LIMIT_BURST, *burst);
                u32_attr(d, NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS);
                u32_attr(d, NFTA_LIMIT_FLAGS, 0);
            }),
            Stmt::Log { group, prefix, snaplen } => {
                if prefix.len() > 127 {
                    return Err(format!("log prefix {prefix:?} is longer than 127 bytes"));
                }
                self.expr("log", |d| {
                    attr_str(d, NFTA_LOG_PREFIX, prefix);
                    attr(d, NFTA_LOG_GROUP, &group.to_be_bytes());
                    u32_attr(d, NFTA_LOG_SNAPLEN, *snaplen);
                })
            }
            Stmt::Vmap { key, map } => {
                self.left(&Left::Field(*key))?;
                self.lookup(map, Some(NFT_REG_VERDICT), false);
            }
        }
        Ok(())
    }
}

/// The rule's expressions as the payload of `NFTA_RULE_EXPRESSIONS`.
pub fn compile(statements: &[Stmt]) -> Result<Vec<u8>, String> {
    let mut program = Program { out: Vec::with_capacity(512), ..Program::default() };
    for s in statements {
        program.statement(s)?;
    }
    Ok(program.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expression names of a compiled rule, in order.
    fn names(bytes: &[u8]) -> Vec<String> {
        super::super::wire::attributes(bytes)
            .filter_map(|(_, elem, _)| {
                let (_, name, _) = super::super::wire::attributes(elem).next()?;
                Some(String::from_utf8_lossy(name).trim_end_matches('\0').to_string())
            })
            .collect()
    }

    fn matching(op: Op, left: Left, right: Right) -> Stmt {
        Stmt::Match { op, left, right }
    }

    #[test]
    fn an_address_match_needs_its_family_once() {
        let rule = [
            matching(Op::Eq, Left::Field(Field::Payload("ip", "saddr")), Right::Set("s-4".into())),
            matching(
                Op::Eq,
                Left::Field(Field::Payload("ip", "daddr")),
                Right::Prefix("10.0.0.0/8".parse().expect("prefix")),
            ),
            Stmt::Counter,
            Stmt::Accept,
        ];
        let bytes = compile(&rule).expect("compiles");
        assert_eq!(
            names(&bytes),
            ["meta", "cmp", "payload", "lookup", "payload", "bitwise", "cmp", "counter", "immediate"]
        );
    }

    #[test]
    fn tcp_flags_need_tcp_and_ranges_are_two_comparisons() {
        let flags = matching(
            Op::Ne,
            Left::Masked(Field::Payload("tcp", "flags"), &["fin", "syn", "rst", "ack"]),
            Right::Name("syn".into()),
        );
        assert_eq!(names(&compile(&[flags]).expect("compiles")), ["meta", "cmp", "payload", "bitwise", "cmp"]);
        let range = matching(Op::Eq, Left::Field(Field::Payload("th", "dport")), Right::Range(1000, 2000));
        let bytes = compile(&[range]).expect("compiles");
        assert_eq!(names(&bytes), ["payload", "cmp", "cmp"]);
        assert!(bytes.windows(2).any(|w| w == 1000u16.to_be_bytes()), "ports are big-endian");
    }

    #[test]
    fn what_it_cannot_carry_is_an_error_naming_it() {
        let err = compile(&[matching(Op::Eq, Left::Field(Field::Meta("mark")), Right::Number(1))])
            .expect_err("meta mark is not written by render");
        assert!(err.contains("meta mark"), "{err}");
        let port = matching(Op::Eq, Left::Field(Field::Payload("th", "dport")), Right::Number(70_000));
        assert!(compile(&[port]).is_err(), "a port is 16 bits");
    }

    #[test]
    fn flags_are_set_together_and_an_unknown_one_is_an_error() {
        assert_eq!(value(Kind::TcpFlags, &Right::Names(&["fin", "syn", "rst", "ack"])), Ok(vec![0x17]));
        assert_eq!(
            value(Kind::TcpFlags, &Right::Names(&["syn", "syn"])),
            Ok(vec![0x02]),
            "a repeated flag is one flag"
        );
        assert_eq!(value(Kind::CtState, &Right::Names(&["established", "related"])), Ok(6u32.to_ne_bytes().to_vec()));
        let err = value(Kind::CtState, &Right::Name("open".into())).expect_err("no such state");
        assert!(err.contains("open"), "{err}");
    }

    #[test]
    fn registers_are_numbered_as_nft_numbers_them() {
        assert_eq!([register(0), register(1), register(2), register(4), register(5)], [1, 9, 10, 2, 13]);
    }
}
