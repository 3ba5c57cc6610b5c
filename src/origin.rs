//! Which web pages may open `/ws` (and publish) from a visitor's browser:
//! the `Origin` policy, against cross-site WebSocket hijacking.
//!
//! Browsers send `Origin` with every WebSocket handshake and cross-site
//! POST; other clients usually send none, and a request without one is not
//! judged here. Unset, the policy is same-origin: the origin's host and port
//! must be those of the `Host` header (as gorilla/websocket does by default).
//! `--allowed-origins` lists exact origins (`https://app.example.com`),
//! wildcard subdomains (`https://*.example.com`), or `*`.

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

/// Splits `host[:port]` (IPv6 literals in brackets); the port is `None`
/// when absent. `None` for a malformed value.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", host.to_ascii_lowercase()), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.trim().split_once("://")?;
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

    /// May a page from `origin` talk to us, asked with this `Host` header?
    pub fn allows(&self, origin: &str, host: &str) -> bool {
        match &self.allowed {
            None => {
                let (Some(origin), Some((host, port))) = (Origin::parse(origin), split_host_port(host)) else {
                    return false; // includes `Origin: null`
                };
                origin.host == host && port.unwrap_or(default_port(&origin.scheme).unwrap_or(0)) == origin.port
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
    fn same_origin_compares_host_and_port_with_the_host_header() {
        let policy = OriginPolicy::default();
        assert!(policy.allows("http://hub.example:8080", "hub.example:8080"));
        assert!(policy.allows("https://HUB.example", "hub.example:443"), "default port, any case");
        assert!(policy.allows("https://hub.example", "hub.example"));
        assert!(policy.allows("http://[::1]:8080", "[::1]:8080"));
        assert!(!policy.allows("http://evil.example:8080", "hub.example:8080"), "cross-site");
        assert!(!policy.allows("http://hub.example:9090", "hub.example:8080"), "other port");
        assert!(!policy.allows("https://hub.example", "hub.example:80"), "https origin, port 80");
        assert!(!policy.allows("null", "hub.example"), "opaque origins are refused");
        assert!(!policy.allows("garbage", "hub.example"));
    }

    #[test]
    fn allowed_lists_exact_wildcard_and_any() {
        let policy =
            OriginPolicy::parse("https://app.example.com, https://*.example.org,http://localhost:3000").unwrap();
        assert!(policy.allows("https://app.example.com", "hub"));
        assert!(policy.allows("https://APP.example.com:443", "hub"));
        assert!(!policy.allows("http://app.example.com", "hub"), "scheme matters");
        assert!(!policy.allows("https://app.example.com:8443", "hub"), "port matters");
        assert!(policy.allows("https://a.example.org", "hub"));
        assert!(policy.allows("https://a.b.example.org", "hub"));
        assert!(!policy.allows("https://example.org", "hub"), "the bare domain is not a subdomain");
        assert!(!policy.allows("https://evilexample.org", "hub"));
        assert!(!policy.allows("https://a.example.org.evil.net", "hub"));
        assert!(policy.allows("http://localhost:3000", "hub"));
        assert!(!policy.allows("null", "hub"));
        let any = OriginPolicy::parse("*").unwrap();
        assert!(any.allows("null", "hub") && any.allows("https://anything.example", "hub"));
        for bad in ["", " , ", "example.com", "https://", "https://a.example/path", "ftp://*."] {
            assert!(OriginPolicy::parse(bad).is_err(), "{bad:?}");
        }
    }
}
