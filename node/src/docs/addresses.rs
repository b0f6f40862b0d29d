//! The address records: one document per state, `addresses/STATE`, in which that state
//! alone says where its nodes listen. Peers dial these addresses in place of the charter's,
//! so a node moves without an amendment. This module owns the record's fields and the
//! syntax of its addresses, which the rules, the command and the view share.

use std::net::{Ipv4Addr, Ipv6Addr};

use automerge::{Automerge, ROOT, ReadDoc};

/// The record's field that holds the addresses, separated by spaces.
pub const FIELD: &str = "addresses";
/// The most addresses one state publishes.
pub const MAX_ADDRESSES: usize = 8;
/// The longest address.
pub const MAX_LEN: usize = 200;

/// Checks one address: `/ip4/A.B.C.D/tcp/PORT`, `/ip6/ADDR/tcp/PORT`, or
/// `/dns/NAME/tcp/PORT` (also `dns4` and `dns6`).
pub fn check(address: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("address {address:?} {why}"));
    if address.len() > MAX_LEN {
        return bad("is too long");
    }
    let parts: Vec<&str> = address.split('/').collect();
    let [empty, protocol, host, tcp, port] = parts.as_slice() else {
        return bad("is not /ip4|ip6|dns/HOST/tcp/PORT");
    };
    if !empty.is_empty() || *tcp != "tcp" {
        return bad("is not /ip4|ip6|dns/HOST/tcp/PORT");
    }
    let host_ok = match *protocol {
        "ip4" => host.parse::<Ipv4Addr>().is_ok(),
        "ip6" => host.parse::<Ipv6Addr>().is_ok(),
        "dns" | "dns4" | "dns6" => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        }
        _ => return bad("is not /ip4|ip6|dns/HOST/tcp/PORT"),
    };
    if !host_ok {
        return bad(&format!("has a bad {protocol} host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => bad("has a bad port"),
    }
}

/// The addresses of a record's field, each checked: one to [`MAX_ADDRESSES`], separated
/// by single spaces, none twice.
pub fn parse(text: &str) -> Result<Vec<&str>, String> {
    let addresses: Vec<&str> = text.split(' ').collect();
    if text.is_empty() || addresses.len() > MAX_ADDRESSES {
        return Err(format!(
            "a state publishes 1 to {MAX_ADDRESSES} addresses, separated by spaces"
        ));
    }
    for (i, a) in addresses.iter().enumerate() {
        check(a)?;
        if addresses[..i].contains(a) {
            return Err(format!("address {a:?} is given twice"));
        }
    }
    Ok(addresses)
}

/// The addresses an address record holds now (its owner's last write wins).
pub fn of(doc: &Automerge) -> Vec<String> {
    let Ok(Some((value, _))) = doc.get(ROOT, FIELD) else {
        return Vec::new();
    };
    let text = value.as_str().unwrap_or_default();
    parse(text)
        .map(|a| a.into_iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_one_by_one() {
        for good in [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/dns/spoc.garda.ie/tcp/443",
            "/dns4/node-2.example.eu/tcp/65535",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/tcp/65536",
            "/ip4/127.0.0.1/tcp/+80",
            "/ip4/300.0.0.1/tcp/4001",
            "/ip4/127.0.0.1/udp/4001",
            "/ip4/127.0.0.1/tcp/4001/p2p/x",
            "/dns/Spoc.IE/tcp/4001",
            "ip4/127.0.0.1/tcp/4001",
            "/onion3/abc/tcp/1",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("/ip4/10.0.0.1/tcp/1 /ip6/::1/tcp/2"),
            Ok(vec!["/ip4/10.0.0.1/tcp/1", "/ip6/::1/tcp/2"])
        );
        assert!(parse("").is_err());
        assert!(parse("/ip4/10.0.0.1/tcp/1  /ip6/::1/tcp/2").is_err());
        assert!(parse("/ip4/10.0.0.1/tcp/1 /ip4/10.0.0.1/tcp/1").is_err());
        let nine = ["/ip4/10.0.0.1/tcp/1"; 9].join(" ");
        assert!(parse(&nine).unwrap_err().contains("1 to 8 addresses"));
    }
}
