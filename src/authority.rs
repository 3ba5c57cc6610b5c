//! `host[:port]` as a URL or a `Host` header writes it (an IPv6 literal in
//! brackets), read the same way wherever the hub meets one: `Origin` and
//! `Host` headers, `--allowed-origins`, the `--redis` URL.

/// A `host[:port]`, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The host as written, without the brackets of an IPv6 literal.
    pub host: &'a str,
    /// It was an IPv6 literal in brackets.
    pub bracketed: bool,
    pub port: Option<u16>,
}

/// Splits `host[:port]`. A port is digits only; a host is not empty and
/// holds nothing a URL would end it at (`/ ? # @`) nor spaces.
pub fn parse(authority: &str) -> Result<HostPort<'_>, &'static str> {
    let (host, bracketed, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or("expected :port after ]")?),
            };
            (host, true, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, false, Some(port)),
            None => (authority, false, None),
        },
    };
    if host.is_empty() {
        return Err("the host is missing");
    }
    if host.contains(['/', '?', '#', '@', ' ', '[', ']']) {
        return Err("not a host name");
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().map_err(|_| "bad port")?),
        Some(_) => return Err("bad port"),
    };
    Ok(HostPort { host, bracketed, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_and_ipv6_literals() {
        let hp = |host, bracketed, port| Ok(HostPort { host, bracketed, port });
        assert_eq!(parse("hub.example:8080"), hp("hub.example", false, Some(8080)));
        assert_eq!(parse("hub.example"), hp("hub.example", false, None));
        assert_eq!(parse("[::1]:443"), hp("::1", true, Some(443)));
        assert_eq!(parse("[fd00::2]"), hp("fd00::2", true, None));
        for bad in ["", ":80", "[::1", "[::1]x", "h:", "h:8o", "h:99999", "a/b", "u@h", "a b", "[]"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
