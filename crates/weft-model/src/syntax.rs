//! The Kubernetes string syntaxes weft accepts, so that every Kubernetes object fits: DNS
//! subdomain names, label keys and values, annotation keys, IANA service names (named ports),
//! interface names and MAC addresses. Each check returns a sentence a person can act on.

pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_NAME_LEN: usize = 63;
/// Kubernetes caps the total size of an object's annotations at 256 KiB.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS subdomain (RFC 1123): dot-separated lowercase labels, at most 253 characters.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters, got {}", s.len()));
    }
    if !s.split('.').all(is_dns_label) {
        return Err(format!(
            "{s:?} is not a DNS subdomain: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// The part of a label key after the optional prefix, and label values when not empty:
/// at most 63 characters, alphanumerics with `-`, `_` and `.` inside.
fn qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= MAX_LABEL_NAME_LEN
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn qualified_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix).map_err(|e| format!("key prefix {e}"))?;
    }
    if !qualified_name_part(name) {
        return Err(format!(
            "{key:?} is not a valid key: the name part must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit, with an optional DNS-subdomain prefix and '/'"
        ));
    }
    Ok(())
}

/// A label value: empty, or up to 63 characters as in [`qualified_key`]'s name part.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || qualified_name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// IANA_SVC_NAME (RFC 6335), the syntax of Kubernetes' named ports: at most 15 characters of
/// lowercase letters, digits and `-`, at least one letter, no leading, trailing or double `-`.
pub fn service_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid port name (IANA_SVC_NAME): 1-15 lowercase letters, digits and '-', with at least one letter and no leading, trailing or double '-'"
        ))
    }
}

/// A Linux interface name, in the plain characters weft accepts.
pub fn interface_name(s: &str) -> Result<(), String> {
    // Linux's rules (dev_valid_name: 1-15 bytes, not `.` or `..`, no `/`, `:` or white space),
    // narrowed to the characters names are made of in practice, so that no name needs quoting
    // in a log line, an nft listing or a shell.
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid interface name: 1-15 of the letters, digits, '-', '_' and '.'"))
    }
}

/// What every host-side interface of a port starts with (DESIGN.md §7). The agent drops the
/// traffic of an interface with this prefix that no port of its node names, and never touches
/// an interface without it: the node's own links (its uplink, `lo`) can never be made a port's.
pub const INTERFACE_PREFIX: &str = "weft";

/// A port's host-side interface: a valid name with weft's prefix and something after it.
pub fn port_interface(s: &str) -> Result<(), String> {
    interface_name(s)?;
    if s.len() > INTERFACE_PREFIX.len() && s.starts_with(INTERFACE_PREFIX) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a port's interface: a port's interface starts with {INTERFACE_PREFIX:?} (the node's own interfaces are never a port's)"
        ))
    }
}

/// A MAC address written as six colon-separated pairs of hex digits.
pub fn mac_address(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok { Ok(()) } else { Err(format!("{s:?} is not a MAC address like 02:42:ac:11:00:02")) }
}

/// An instance id: what an orchestrator names the workload of a port by (a pod's UID, a
/// VM's id). Letters, digits and `._:-`, starting and ending with a letter or digit, at most
/// 128 characters: every UUID and cloud instance id fits, and it is safe in a log line.
pub fn instance_id(s: &str) -> Result<(), String> {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    let ok = !s.is_empty()
        && s.len() <= 128
        && edge(s.bytes().next())
        && edge(s.bytes().last())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an instance id: letters, digits and ._:- (starting and ending with a letter or digit), at most 128"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        for good in ["0a1b2c3d-4e5f-6789-abcd-ef0123456789", "i-0abc123", "vm:42", "a", &"a".repeat(128)] {
            assert!(instance_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a b", "a/b", "ü", &"a".repeat(129)] {
            assert!(instance_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_subdomains() {
        for good in ["a", "k8s-default", "yelb-ui.frontend", "0abc", &"a".repeat(63)] {
            assert!(dns_subdomain(good).is_ok(), "{good}");
        }
        let long = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62));
        assert_eq!(long.len(), 254);
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", ".a", "a.", &"a".repeat(64), &long] {
            assert!(dns_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for good in ["app", "kubernetes.io/metadata.name", "a_b.c-d", "A"] {
            assert!(qualified_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/app", "Example.com/app", "app/", "-app", "a/b/c", &"a".repeat(64)] {
            assert!(qualified_key(bad).is_err(), "{bad}");
        }
        for good in ["", "db", "v1.2_x-y", &"v".repeat(63)] {
            assert!(label_value(good).is_ok(), "{good}");
        }
        for bad in ["-x", "x-", "a b", "x/y", &"v".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names() {
        for good in ["http", "redis-port", "h2c", "a1"] {
            assert!(service_name(good).is_ok(), "{good}");
        }
        for bad in ["", "80", "HTTP", "-http", "http-", "a--b", "abcdefghijklmnop", "a_b"] {
            assert!(service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interfaces_and_macs() {
        assert!(interface_name("weft1a2b3c4d5e6").is_ok());
        assert!(interface_name("weft1a2b3c4d5e6f").is_err());
        assert!(interface_name("a/b").is_err());
        // What the attack on issue 17 used: accepted before, refused now.
        assert!(interface_name("x\";drop").is_err());
        assert!(interface_name("weft a").is_err());
        assert!(interface_name("..").is_err());
        assert!(interface_name("").is_err());
        assert!(port_interface("weft0ab4915f708").is_ok());
        for not_a_port in ["eth0", "lo", "weft", "Weft1"] {
            assert!(port_interface(not_a_port).is_err(), "{not_a_port}");
        }
        assert!(mac_address("02:42:AC:11:00:02").is_ok());
        assert!(mac_address("02:42:ac:11:00").is_err());
        assert!(mac_address("02-42-ac-11-00-02").is_err());
    }
}
