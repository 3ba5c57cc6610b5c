//! Who may connect: the one step that lets an upgrade or an HTTP publish in,
//! or says which status refuses it.
//!
//! The connection parses the request and asks here before it answers, with
//! everything the decision needs: the request's credentials (host, origin,
//! tokens), the peer address from `accept`, and the hub's counts. Capacity
//! and publish credentials are decided here today; origin policy, tokens and
//! per-address limits belong here too.

use std::net::SocketAddr;

use crate::config::Config;
use crate::http::{PublishHead, Rejection, Upgrade};

/// The hub-wide state admission decisions depend on.
#[derive(Debug, Default)]
pub struct Admission {
    /// WebSocket clients now open, against `--max-connections`.
    ws_clients: usize,
}

impl Admission {
    pub const fn new() -> Admission {
        Admission { ws_clients: 0 }
    }

    /// May this upgrade become a WebSocket client?
    pub fn upgrade(&self, config: &Config, _upgrade: &Upgrade, _peer: SocketAddr) -> Result<(), Rejection> {
        if self.ws_clients >= config.max_connections {
            return Err(Rejection::new(503, "at --max-connections"));
        }
        Ok(())
    }

    /// May this request publish? With `--publish-token`, only with that
    /// bearer token (401 otherwise); without one, only loopback peers (403).
    pub fn publish(&self, config: &Config, head: &PublishHead, peer: SocketAddr) -> Result<(), Rejection> {
        match &config.publish_token {
            Some(token) => {
                let presented = head.credentials.bearer.as_deref().unwrap_or("");
                if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err(Rejection::new(401, "publish needs the right bearer token"))
                }
            }
            None if peer.ip().is_loopback() => Ok(()),
            None => Err(Rejection::new(403, "without --publish-token only loopback peers may publish")),
        }
    }

    /// A client was upgraded (counts against `--max-connections`).
    pub(crate) fn joined(&mut self) {
        self.ws_clients += 1;
    }

    /// An upgraded client left.
    pub(crate) fn left(&mut self) {
        self.ws_clients = self.ws_clients.saturating_sub(1);
    }

    pub fn ws_clients(&self) -> usize {
        self.ws_clients
    }
}

/// Compares secrets in time that depends only on the presented value's
/// length, never on where the first difference is, and not on the secret's
/// length: every presented byte is compared against the secret cycled.
pub(crate) fn constant_time_eq(presented: &[u8], secret: &[u8]) -> bool {
    if secret.is_empty() {
        return presented.is_empty();
    }
    let mut diff = u8::from(presented.len() != secret.len());
    for (i, b) in presented.iter().enumerate() {
        diff |= b ^ secret[i % secret.len()];
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Credentials;
    use crate::topic::Topic;

    fn head(bearer: Option<&str>) -> PublishHead {
        PublishHead {
            topic: Topic::new("t"),
            content_length: 1,
            credentials: Credentials { bearer: bearer.map(str::to_string), ..Credentials::default() },
            octet_stream: false,
            expect_continue: false,
        }
    }

    const LOCAL: &str = "127.0.0.1:1000";
    const REMOTE: &str = "192.0.2.7:1000";

    #[test]
    fn capacity_refuses_upgrades_with_503() {
        let config = Config { max_connections: 1, ..Config::default() };
        let up = Upgrade { accept_key: String::new(), topics: Vec::new(), credentials: Credentials::default() };
        let mut admission = Admission::default();
        assert_eq!(admission.upgrade(&config, &up, LOCAL.parse().unwrap()), Ok(()));
        admission.joined();
        assert_eq!(admission.upgrade(&config, &up, LOCAL.parse().unwrap()).unwrap_err().status, 503);
        admission.left();
        assert_eq!(admission.upgrade(&config, &up, LOCAL.parse().unwrap()), Ok(()));
    }

    #[test]
    fn publish_needs_the_token_or_loopback() {
        let admission = Admission::default();
        let open = Config::default();
        assert_eq!(admission.publish(&open, &head(None), LOCAL.parse().unwrap()), Ok(()));
        assert_eq!(admission.publish(&open, &head(None), REMOTE.parse().unwrap()).unwrap_err().status, 403);
        let locked = Config { publish_token: Some("s3cret".into()), ..Config::default() };
        assert_eq!(admission.publish(&locked, &head(Some("s3cret")), REMOTE.parse().unwrap()), Ok(()));
        for wrong in [None, Some("s3cre"), Some("s3cret!"), Some("S3cret"), Some("")] {
            assert_eq!(admission.publish(&locked, &head(wrong), LOCAL.parse().unwrap()).unwrap_err().status, 401);
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abcabc", b"abc"), "a repetition of the secret is not the secret");
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"x", b""));
    }
}
