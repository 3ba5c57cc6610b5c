//! Which web pages may open `/ws` (and publish) from a visitor's browser:
//! the `Origin` policy, against cross-site WebSocket hijacking, and the
//! names the hub answers to, against DNS rebinding.
//!
//! Browsers send `Origin` with every WebSocket handshake and cross-site
//! POST; other clients usually send none. Unset, the policy is same-origin:
//! the origin's scheme must be the listener's (`https` on TLS) and its host
//! and port those of the `Host` header. `Host` alone proves nothing: a page
//! whose name an attacker re-pointed at the hub's address (DNS rebinding)
//! is same-origin with itself, so the name must also be one the hub knows
//! itself by ([`known_host`]). `--allowed-origins` lists exact origins
//! (`https://app.example.com`), wildcard subdomains
//! (`https://*.example.com`), or `*`.

/// An origin, parsed: `scheme://host[:port]`, lowercased, port made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]`, the host lowercased (an IPv6 literal keeps its
/// brackets, so it compares as written); `None` for a malformed value.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let parsed = crate::authority::parse(authority).ok()?;
    let host = parsed.host.to_ascii_lowercase();
    Some((if parsed.bracketed { format!("[{host}]") } else { host }, parsed.port))
}

/// The default port of the listener's own scheme.
fn listener_port(tls: bool) -> u16 {
    if tls { 443 } else { 80 }
}

/// Is `scheme` the listener's: `https`/`wss` on TLS, `http`/`ws` otherwise?
fn listener_scheme(scheme: &str, tls: bool) -> bool {
    if tls { matches!(scheme, "https" | "wss") } else { matches!(scheme, "http" | "ws") }
}

/// Does the `Host` header name the hub by a name it knows itself by: an IP
/// literal, `localhost`, or one of `--allowed-hosts`? A rebound name is
/// none of these.
pub fn known_host(host: &str, allowed_hosts: &[String]) -> bool {
    let Some((name, _)) = split_host_port(host) else {
        return false;
    };
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || allowed_hosts.contains(&name)
}

/// Checks one `--allowed-hosts` entry: a host name without a port,
/// lowercased.
pub fn parse_host_name(entry: &str) -> Result<String, String> {
    let name = entry.trim_ascii().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['.', '-']);
    if valid { Ok(name) } else { Err(format!("'{entry}' is not a host name (no scheme, no port)")) }
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.trim_ascii().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = split_host_port(authority.strip_suffix('/').unwrap_or(authority))?;
        let port = port.or_else(|| default_port(&scheme))?;
        Some(Origin { scheme, host, port })
    }
}

/// One entry of `--allowed-origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: any subdomain of `suffix`, not `suffix` itself.
    Subdomains {
        scheme: String,
        suffix: String,
        port: u16,
    },
}

/// The `Origin` policy: same-origin (the default), or the origins of
/// `--allowed-origins`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `None`: same-origin.
    allowed: Option<Vec<Pattern>>,
}

impl OriginPolicy {
    /// Parses `--allowed-origins`: a comma-separated list.
    pub fn parse(list: &str) -> Result<OriginPolicy, String> {
        let mut patterns = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let pattern = if entry == "*" {
                Pattern::Any
            } else if let Some((scheme, rest)) = entry.split_once("://*.") {
                let scheme = scheme.to_ascii_lowercase();
                let probe = Origin::parse(&format!("{scheme}://x.{rest}"))
                    .ok_or_else(|| format!("'{entry}' is not an origin like https://*.example.com"))?;
                Pattern::Subdomains { scheme, suffix: probe.host[2..].to_string(), port: probe.port }
            } else {
                Pattern::Exact(
                    Origin::parse(entry)
                        .ok_or_else(|| format!("'{entry}' is not an origin like https://app.example.com"))?,
                )
            };
            patterns.push(pattern);
        }
        if patterns.is_empty() {
            return Err("expected a comma-separated list of origins, or *".into());
        }
        Ok(OriginPolicy { allowed: Some(patterns) })
    }

    /// The default: same-origin with the hub.
    pub fn is_same_origin(&self) -> bool {
        self.allowed.is_none()
    }

    /// May a page from `origin` talk to us, asked with this `Host` header on
    /// a listener that speaks TLS (`tls`) or not?
    pub fn allows(&self, origin: &str, host: &str, tls: bool) -> bool {
        match &self.allowed {
            None => {
                let (Some(origin), Some((host, port))) = (Origin::parse(origin), split_host_port(host)) else {
                    return false; // includes `Origin: null`
                };
                listener_scheme(&origin.scheme, tls)
                    && origin.host == host
                    && port.unwrap_or(listener_port(tls)) == origin.port
            }
            Some(patterns) => {
                let parsed = Origin::parse(origin);
                patterns.iter().any(|pattern| match (pattern, &parsed) {
                    (Pattern::Any, _) => true,
                    (Pattern::Exact(allowed), Some(origin)) => allowed == origin,
                    (Pattern::Subdomains { scheme, suffix, port }, Some(origin)) => {
                        origin.scheme == *scheme
                            && origin.port == *port
                            && origin.host.len() > suffix.len() + 1
                            && origin.host.ends_with(suffix.as_str())
                            && origin.host.as_bytes()[origin.host.len() - suffix.len() - 1] == b'.'
                    }
                    _ => false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_scheme_host_and_port_with_the_listener_and_host() {
        let policy = OriginPolicy::default();
        assert!(policy.allows("http://hub.example:8080", "hub.example:8080", false));
        assert!(policy.allows("https://HUB.example", "hub.example:443", true), "default port, any case");
        assert!(policy.allows("https://hub.example", "hub.example", true));
        assert!(policy.allows("http://hub.example", "hub.example", false));
        assert!(policy.allows("http://[::1]:8080", "[::1]:8080", false));
        assert!(!policy.allows("http://evil.example:8080", "hub.example:8080", false), "cross-site");
        assert!(!policy.allows("http://hub.example:9090", "hub.example:8080", false), "other port");
        assert!(!policy.allows("https://hub.example", "hub.example:80", false), "https origin, port 80");
        assert!(!policy.allows("http://hub.example:8443", "hub.example:8443", true), "http page on a TLS hub");
        assert!(!policy.allows("https://hub.example:8080", "hub.example:8080", false), "https page, plain hub");
        assert!(!policy.allows("http://hub.example", "hub.example", true), "the default port is the listener's");
        assert!(!policy.allows("null", "hub.example", false), "opaque origins are refused");
        assert!(!policy.allows("garbage", "hub.example", false));
    }

    #[test]
    fn known_hosts_are_ip_literals_localhost_and_the_allowed_names() {
        let allowed = vec!["hub.lan".to_string()];
        for host in
            ["127.0.0.1:8080", "10.0.0.7", "[::1]:8080", "[fd00::2]", "localhost:8080", "LOCALHOST", "hub.lan:1"]
        {
            assert!(known_host(host, &allowed), "{host}");
        }
        for host in ["rebind.evil.example:8080", "hub.lan.evil.example", "evilhub.lan", "127.0.0.1.nip.io", "[::1", ""]
        {
            assert!(!known_host(host, &allowed), "{host}");
        }
        assert_eq!(parse_host_name(" Hub.LAN ").unwrap(), "hub.lan");
        for bad in ["", "hub.lan:8080", "https://hub.lan", "hub lan", ".hub"] {
            assert!(parse_host_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_lists_exact_wildcard_and_any() {
        let policy =
            OriginPolicy::parse("https://app.example.com, https://*.example.org,http://localhost:3000").unwrap();
        assert!(policy.allows("https://app.example.com", "hub", false));
        assert!(policy.allows("https://APP.example.com:443", "hub", false));
        assert!(!policy.allows("http://app.example.com", "hub", false), "scheme matters");
        assert!(!policy.allows("https://app.example.com:8443", "hub", false), "port matters");
        assert!(policy.allows("https://a.example.org", "hub", false));
        assert!(policy.allows("https://a.b.example.org", "hub", false));
        assert!(!policy.allows("https://example.org", "hub", false), "the bare domain is not a subdomain");
        assert!(!policy.allows("https://evilexample.org", "hub", false));
        assert!(!policy.allows("https://a.example.org.evil.net", "hub", false));
        assert!(policy.allows("http://localhost:3000", "hub", false));
        assert!(!policy.allows("null", "hub", false));
        let any = OriginPolicy::parse("*").unwrap();
        assert!(any.allows("null", "hub", false) && any.allows("https://anything.example", "hub", false));
        for bad in ["", " , ", "example.com", "https://", "https://a.example/path", "ftp://*."] {
            assert!(OriginPolicy::parse(bad).is_err(), "{bad:?}");
        }
    }
}
