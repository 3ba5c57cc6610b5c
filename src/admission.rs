//! Who may connect: the one step that lets an upgrade or an HTTP publish in,
//! or says which status refuses it.
//!
//! Two moments: at `accept`, before a byte is read (connections per source
//! address, pending requests), and when a request head is complete (origin
//! policy, tokens and their topic grants, capacity, publish credentials). The
//! connection parses the request and asks here before it answers, with
//! everything the decision needs: the request's credentials (host, origin,
//! tokens), the peer address from `accept`, and the hub's counts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::auth::{Claims, Grant, Verifier};
use crate::config::Config;
use crate::http::{Credentials, PublishHead, Rejection, Request, Upgrade};
use crate::origin::known_host;
use crate::time::Millis;

/// Where a request came in: the peer's address (from `accept`), and
/// whether its listener speaks TLS (an `https` page is same-origin only
/// with a TLS listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Loopback, in either family: `::ffff:127.0.0.1` (an IPv4 client of a
/// dual-stack listener) is loopback too.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The hub-wide state admission decisions depend on.
#[derive(Debug, Default)]
pub struct Admission {
    /// WebSocket clients now open, against `--max-connections`.
    ws_clients: usize,
    /// Connections that have not finished their HTTP request.
    pending: usize,
    /// Per source (an IPv4 address or an IPv6 /64): its open connections
    /// and its connection rate. An entry lives while the source has
    /// connections, and after that until its rate bucket is full again.
    per_source: Option<HashMap<Source, SourceEntry>>,
    /// JWT keys, when configured: `/ws` then needs a token.
    verifier: Option<Box<Verifier>>,
    /// Wall-clock time for token claims, in seconds since the epoch: set by
    /// the driver each turn (an explicit clock, like `now` for deadlines).
    unix_now: u64,
}

/// What admission remembers of one source.
#[derive(Debug, Clone, Copy)]
struct SourceEntry {
    /// Connections open (pending ones included).
    open: u32,
    /// `--connection-rate-per-ip`: a token bucket of new connections, as of
    /// `refilled`; it holds one second's worth at most (the burst).
    tokens: f32,
    refilled: Millis,
}

impl SourceEntry {
    /// The bucket as of `now`.
    fn tokens(&self, rate: usize, now: Millis) -> f32 {
        let elapsed = now.saturating_sub(self.refilled) as f32 / 1000.0;
        (self.tokens + rate as f32 * elapsed).min(rate as f32)
    }
}

/// What an admitted upgrade may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Bit `i` set: the client may publish to its `i`-th topic (at most 16).
    pub publish_mask: u16,
    /// Milliseconds until its token expires (then: close 1008).
    pub expires_in: Option<u64>,
    /// The token's subject, for log lines.
    pub sub: Option<String>,
}

/// Where connections come from, for per-address limits: an IPv4 address, or
/// the /64 of an IPv6 address (one subscriber's prefix, usually).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Source::V6Prefix(prefix)
                }
            },
        }
    }
}

impl Admission {
    /// An admission with no keys and no one counted (a `static` for tests).
    #[cfg(any(test, feature = "testing"))]
    pub const fn new() -> Admission {
        Admission { ws_clients: 0, pending: 0, per_source: None, verifier: None, unix_now: 0 }
    }

    /// Checks tokens with these keys from now on.
    pub(crate) fn set_verifier(&mut self, verifier: Option<Verifier>) {
        self.verifier = verifier.map(Box::new);
    }

    /// Whether JWT keys are configured.
    pub(crate) fn verifies_tokens(&self) -> bool {
        self.verifier.is_some()
    }

    /// The wall-clock time for token claims (seconds since the epoch).
    pub(crate) fn set_unix_now(&mut self, unix_now: u64) {
        self.unix_now = unix_now;
    }

    /// Verifies the token an upgrade or publish presents: `?token=` or
    /// `Authorization: Bearer`. `None` without configured keys.
    fn claims(&self, credentials: &Credentials) -> Option<Result<Claims, Rejection>> {
        let verifier = self.verifier.as_ref()?;
        let Some(token) = credentials.bearer.as_deref().or(credentials.query_token.as_deref()) else {
            return Some(Err(Rejection::new(401, "no token (?token= or Authorization: Bearer)")));
        };
        Some(verifier.verify(token, self.unix_now).map_err(|why| Rejection::new(401, why)))
    }

    /// May a new TCP connection from `peer` be kept? Checked at `accept`,
    /// before anything is read (no TLS or HTTP work for a refused one): a
    /// refused one is closed at once.
    pub fn connection(&self, config: &Config, peer: SocketAddr, now: Millis) -> Result<(), &'static str> {
        if self.pending >= config.max_pending {
            return Err("over --max-pending connections still sending their request");
        }
        let Some(entry) = self.per_source.as_ref().and_then(|m| m.get(&Source::of(peer.ip()))) else {
            return Ok(());
        };
        if entry.open as usize >= config.max_connections_per_ip {
            return Err("over --max-connections-per-ip");
        }
        let rate = config.connection_rate_per_ip;
        if rate > 0 && entry.tokens(rate, now) < 1.0 {
            return Err("over --connection-rate-per-ip");
        }
        Ok(())
    }

    /// A connection from `peer` was accepted at `now`; it is pending until
    /// its request is done.
    pub(crate) fn connected(&mut self, config: &Config, peer: SocketAddr, now: Millis) {
        self.pending += 1;
        let rate = config.connection_rate_per_ip;
        let map = self.per_source.get_or_insert_with(HashMap::new);
        let entry =
            map.entry(Source::of(peer.ip())).or_insert(SourceEntry { open: 0, tokens: rate as f32, refilled: now });
        entry.open += 1;
        if rate > 0 {
            entry.tokens = entry.tokens(rate, now) - 1.0;
            entry.refilled = now;
        }
    }

    /// Gives back the per-source table's memory after a peak.
    pub(crate) fn shrink(&mut self) {
        if let Some(map) = self.per_source.as_mut() {
            map.shrink_to_fit();
        }
    }

    /// Connections still sending their HTTP request.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// A persistent HTTP connection waits for its next request.
    pub(crate) fn request_started(&mut self) {
        self.pending += 1;
    }

    /// A connection finished sending its HTTP request.
    pub(crate) fn request_done(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// A connection from `peer` is gone. A source without connections is
    /// forgotten once its rate bucket is full (here, or by [`sweep`]).
    ///
    /// [`sweep`]: Admission::sweep
    pub(crate) fn disconnected(&mut self, config: &Config, peer: SocketAddr, now: Millis) {
        let rate = config.connection_rate_per_ip;
        if let Some(map) = self.per_source.as_mut() {
            let source = Source::of(peer.ip());
            if let Some(entry) = map.get_mut(&source) {
                entry.open = entry.open.saturating_sub(1);
                if entry.open == 0 && (rate == 0 || entry.tokens(rate, now) >= rate as f32) {
                    map.remove(&source);
                }
            }
        }
    }

    /// Forgets the sources without connections whose rate bucket is full
    /// again (a walk over the sources, once per sweep: at most one entry
    /// per connection plus the sources of the last second).
    pub(crate) fn sweep(&mut self, config: &Config, now: Millis) {
        let rate = config.connection_rate_per_ip;
        if let Some(map) = self.per_source.as_mut() {
            map.retain(|_, entry| entry.open > 0 || (rate > 0 && entry.tokens(rate, now) < rate as f32));
        }
    }

    /// A request from a browser page must pass the `Origin` policy; under
    /// the default (same-origin) policy it must also name the hub by a name
    /// the hub knows itself by, or a rebound DNS name would make any page
    /// same-origin with the hub (403 either way).
    fn browser_rules(config: &Config, credentials: &Credentials, tls: bool) -> Result<(), Rejection> {
        if !credentials.browser {
            return Ok(());
        }
        let policy = &config.allowed_origins;
        if policy.is_same_origin() && !known_host(&credentials.host, &config.allowed_hosts) {
            return Err(Rejection::new(403, "Host is not a name of this hub (DNS rebinding?); see --allowed-hosts"));
        }
        if let Some(origin) = &credentials.origin
            && !policy.allows(origin, &credentials.host, tls)
        {
            return Err(Rejection::new(403, "Origin not allowed"));
        }
        Ok(())
    }

    /// May this upgrade become a WebSocket client, and what may it do? A
    /// browser page must pass the browser rules (403); with JWT keys, a
    /// valid token is needed (401) whose `subscribe` grant covers every
    /// topic asked for (403) and whose `publish` grant says where the
    /// client's messages go; then capacity (503).
    pub fn upgrade(&self, config: &Config, upgrade: &Upgrade, peer: Peer) -> Result<Admitted, Rejection> {
        let credentials = &upgrade.credentials;
        Admission::browser_rules(config, credentials, peer.tls)?;
        let all_topics = (1u32 << upgrade.topics.len()).wrapping_sub(1) as u16;
        let mut admitted = Admitted { publish_mask: all_topics, expires_in: None, sub: None };
        if let Some(claims) = self.claims(credentials) {
            let claims = claims?;
            if !upgrade.topics.iter().all(|t| claims.subscribe.covers(t.as_str())) {
                return Err(Rejection::new(403, "a topic outside the token's subscribe grant"));
            }
            admitted.publish_mask = 0;
            for (i, topic) in upgrade.topics.iter().enumerate() {
                if claims.publish.covers(topic.as_str()) {
                    admitted.publish_mask |= 1 << i;
                }
            }
            admitted.expires_in = claims.expires.map(|exp| exp.saturating_sub(self.unix_now).saturating_mul(1000));
            admitted.sub = claims.sub;
        }
        if config.no_client_publish {
            admitted.publish_mask = 0;
        }
        if self.ws_clients >= config.max_connections {
            return Err(Rejection::new(503, "at --max-connections"));
        }
        Ok(admitted)
    }

    /// May this request publish? A browser page must pass the browser rules
    /// whatever its credentials (403: no cross-site publishing). With
    /// `--publish-token` or JWT keys, only with that bearer token or a token
    /// whose `publish` grant covers the topic (401 otherwise); with neither,
    /// only the loopback rule (403).
    pub fn publish(&self, config: &Config, head: &PublishHead, peer: Peer) -> Result<(), Rejection> {
        // A bad topic name is answered 400 after admission.
        let covers = |grant: &Grant| head.topic.as_ref().map_or(true, |t| grant.covers(t.as_str()));
        self.admin_route(config, &head.credentials, peer, covers)
    }

    /// May this request read `/metrics`? The rule of `/publish`, where a
    /// token's grant must be `*` (it may publish anywhere).
    pub fn metrics(&self, config: &Config, credentials: &Credentials, peer: Peer) -> Result<(), Rejection> {
        self.admin_route(config, credentials, peer, Grant::covers_all)
    }

    /// The access rule of the admin routes: the browser rules, then the
    /// configured credentials (a JWT's publish grant judged by `granted`),
    /// else the loopback rule: a loopback peer, not a browser page (a page
    /// can POST to localhost), not through a proxy (behind a proxy on the
    /// same host every client is loopback), and asking by a name the hub
    /// knows itself by (a rebound name is a page's).
    fn admin_route(
        &self,
        config: &Config,
        credentials: &Credentials,
        peer: Peer,
        granted: impl Fn(&Grant) -> bool,
    ) -> Result<(), Rejection> {
        Admission::browser_rules(config, credentials, peer.tls)?;
        if let Some(token) = &config.publish_token {
            let presented = credentials.bearer.as_deref().unwrap_or("");
            if constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
                return Ok(());
            }
        }
        match self.claims(credentials) {
            Some(Ok(claims)) if granted(&claims.publish) => Ok(()),
            Some(Ok(_)) => Err(Rejection::new(401, "the token's publish grant does not cover this")),
            Some(Err(_)) | None if config.publish_token.is_some() => {
                Err(Rejection::new(401, "needs the right bearer token"))
            }
            Some(Err(rejection)) => Err(rejection),
            None if credentials.browser => {
                Err(Rejection::new(403, "without credentials configured a browser page may not"))
            }
            None if credentials.proxied => Err(Rejection::new(
                403,
                "a request through a proxy is not loopback (use --admin-listen or a token behind a proxy)",
            )),
            None if !is_loopback(peer.addr.ip()) => {
                Err(Rejection::new(403, "without credentials configured only loopback peers may"))
            }
            None if !known_host(&credentials.host, &config.allowed_hosts) => Err(Rejection::new(
                403,
                "without credentials configured, Host must be localhost, an IP or one of --allowed-hosts",
            )),
            None => Ok(()),
        }
    }

    /// Is this route served on this listener? The demo page only with
    /// `--demo`. With `--admin-listen`, the admin routes (`/publish`,
    /// `/healthz`, `/metrics`) live only on the admin listener and `/ws`
    /// and the demo page only on the public one; elsewhere they are 404.
    pub fn serves(&self, config: &Config, request: &Request, on_admin_listener: bool) -> Result<(), Rejection> {
        const NOT_FOUND: Rejection = Rejection::new(404, "unknown path");
        if matches!(request, Request::Demo) && !config.demo {
            return Err(NOT_FOUND);
        }
        if config.admin_listen.is_none() {
            return Ok(());
        }
        let admin_route = !matches!(request, Request::Upgrade(_) | Request::Sse(_) | Request::Demo);
        if admin_route == on_admin_listener { Ok(()) } else { Err(NOT_FOUND) }
    }

    /// A client was upgraded (counts against `--max-connections`).
    pub(crate) fn joined(&mut self) {
        self.ws_clients += 1;
    }

    /// Upgraded clients.
    pub(crate) fn ws_clients(&self) -> usize {
        self.ws_clients
    }

    /// An upgraded client left.
    pub(crate) fn left(&mut self) {
        self.ws_clients = self.ws_clients.saturating_sub(1);
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
            credentials: Credentials {
                host: "localhost:8080".into(),
                bearer: bearer.map(str::to_string),
                ..Credentials::default()
            },
            octet_stream: false,
            expect_continue: false,
        }
    }

    fn peer(addr: &str) -> Peer {
        Peer { addr: addr.parse().unwrap(), tls: false }
    }

    const LOCAL: &str = "127.0.0.1:1000";
    const REMOTE: &str = "192.0.2.7:1000";

    #[test]
    fn capacity_refuses_upgrades_with_503() {
        let config = Config { max_connections: 1, ..Config::default() };
        let up = Upgrade {
            resume: Default::default(),
            accept_key: String::new(),
            topics: Vec::new(),
            credentials: Credentials::default(),
            deflate: None,
        };
        let mut admission = Admission::default();
        assert!(admission.upgrade(&config, &up, peer(LOCAL)).is_ok());
        admission.joined();
        assert_eq!(admission.upgrade(&config, &up, peer(LOCAL)).unwrap_err().status, 503);
        admission.left();
        assert!(admission.upgrade(&config, &up, peer(LOCAL)).is_ok());
    }

    #[test]
    fn publish_needs_the_token_or_loopback() {
        let admission = Admission::default();
        let open = Config::default();
        assert_eq!(admission.publish(&open, &head(None), peer(LOCAL)), Ok(()));
        assert_eq!(admission.publish(&open, &head(None), peer(REMOTE)).unwrap_err().status, 403);
        let locked = Config { publish_token: Some("s3cret".into()), ..Config::default() };
        assert_eq!(admission.publish(&locked, &head(Some("s3cret")), peer(REMOTE)), Ok(()));
        for wrong in [None, Some("s3cre"), Some("s3cret!"), Some("S3cret"), Some("")] {
            assert_eq!(admission.publish(&locked, &head(wrong), peer(LOCAL)).unwrap_err().status, 401);
        }
    }

    #[test]
    fn the_loopback_rule_refuses_proxies_browsers_and_unknown_names() {
        let admission = Admission::default();
        let config = Config::default();
        let with = |edit: fn(&mut Credentials)| {
            let mut head = head(None);
            edit(&mut head.credentials);
            admission.publish(&config, &head, peer(LOCAL)).map_err(|r| r.status)
        };
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(with(|c| c.proxied = true), Err(403), "a same-host proxy makes everyone loopback");
        assert_eq!(with(|c| c.browser = true), Err(403), "Sec-Fetch-*: a page");
        assert_eq!(with(|c| c.host = "rebind.evil.example:8080".into()), Err(403), "a rebound name");
        assert_eq!(with(|c| c.host = "[::1]:8080".into()), Ok(()));
        for mapped in ["[::ffff:127.0.0.1]:1000", "[::1]:1000"] {
            assert_eq!(admission.publish(&config, &head(None), peer(mapped)), Ok(()), "{mapped} is loopback");
        }
        assert_eq!(admission.publish(&config, &head(None), peer("[::ffff:192.0.2.7]:1000")).unwrap_err().status, 403);
        let named = Config { allowed_hosts: vec!["hub.lan".into()], ..Config::default() };
        let mut lan = head(None);
        lan.credentials.host = "hub.lan:8080".into();
        assert_eq!(admission.publish(&named, &lan, peer(LOCAL)), Ok(()));
    }

    #[test]
    fn origin_policy_guards_upgrades_and_publishes() {
        let admission = Admission::new();
        let local = peer(LOCAL);
        let credentials = |host: &str, origin: Option<&str>, bearer: Option<&str>| Credentials {
            host: host.into(),
            origin: origin.map(str::to_string),
            browser: origin.is_some(),
            bearer: bearer.map(str::to_string),
            ..Credentials::default()
        };
        let up = |host, origin| Upgrade {
            accept_key: String::new(),
            topics: Vec::new(),
            credentials: credentials(host, origin, None),
            deflate: None,
            resume: Default::default(),
        };
        let config = Config::default();
        let hub = "127.0.0.1:8080";
        assert!(admission.upgrade(&config, &up(hub, None), local).is_ok(), "no Origin: not a browser");
        assert!(admission.upgrade(&config, &up(hub, Some("http://127.0.0.1:8080")), local).is_ok());
        assert_eq!(admission.upgrade(&config, &up(hub, Some("http://evil.example")), local).unwrap_err().status, 403);
        // DNS rebinding: same-origin with itself, by a name the hub does not know.
        let rebound = up("rebind.evil.example:8080", Some("http://rebind.evil.example:8080"));
        assert_eq!(admission.upgrade(&config, &rebound, local).unwrap_err().status, 403);
        let named = Config { allowed_hosts: vec!["hub.example".into()], ..Config::default() };
        let lan = up("hub.example:8080", Some("http://hub.example:8080"));
        assert!(admission.upgrade(&named, &lan, local).is_ok(), "--allowed-hosts");
        // The scheme is the listener's.
        let tls = Peer { tls: true, ..local };
        assert_eq!(admission.upgrade(&config, &up(hub, Some("http://127.0.0.1:8080")), tls).unwrap_err().status, 403);
        assert!(admission.upgrade(&config, &up(hub, Some("https://127.0.0.1:8080")), tls).is_ok());
        let publish = |origin, bearer| PublishHead { credentials: credentials(hub, origin, bearer), ..head(None) };
        // Without a token, loopback may publish, but not from a browser page.
        assert_eq!(admission.publish(&config, &publish(None, None), local), Ok(()));
        let same_site = publish(Some("http://127.0.0.1:8080"), None);
        assert_eq!(admission.publish(&config, &same_site, local).unwrap_err().status, 403);
        // With a token, a cross-site page is refused whatever it presents.
        let locked = Config { publish_token: Some("t".into()), ..Config::default() };
        let cross = publish(Some("https://evil.example"), Some("t"));
        assert_eq!(admission.publish(&locked, &cross, local).unwrap_err().status, 403);
        let allowed = publish(Some("http://127.0.0.1:8080"), Some("t"));
        assert_eq!(admission.publish(&locked, &allowed, local), Ok(()));
    }

    #[test]
    fn per_source_and_pending_limits() {
        let config = Config { max_connections_per_ip: 2, max_pending: 3, ..Config::default() };
        let mut admission = Admission::new();
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let a2: SocketAddr = "192.0.2.1:2".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        admission.connected(&config, a, 0);
        admission.connected(&config, a2, 0);
        assert!(admission.connection(&config, a, 0).is_err(), "a third from one address");
        assert!(admission.connection(&config, b, 0).is_ok());
        admission.connected(&config, b, 0);
        let c: SocketAddr = "192.0.2.3:1".parse().unwrap();
        assert!(admission.connection(&config, c, 0).is_err(), "three pending already");
        admission.request_done();
        assert!(admission.connection(&config, c, 0).is_ok(), "pending counts only requests in progress");
        admission.disconnected(&config, a, 0);
        assert!(admission.connection(&config, a, 0).is_ok());
        // IPv6: one /64 is one source; IPv4-mapped addresses are IPv4.
        let v6 = |s: &str| Source::of(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:192.0.2.1"), Source::of("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn connection_rate_per_source_refills_at_its_rate() {
        let config = Config { connection_rate_per_ip: 4, ..Config::default() };
        let mut admission = Admission::new();
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(admission.connection(&config, a, 1_000), Ok(()), "the burst: one second's worth");
            admission.connected(&config, a, 1_000);
            admission.request_done();
        }
        assert_eq!(admission.connection(&config, a, 1_000), Err("over --connection-rate-per-ip"));
        assert_eq!(admission.connection(&config, b, 1_000), Ok(()), "per source");
        assert!(admission.connection(&config, a, 1_249).is_err());
        assert_eq!(admission.connection(&config, a, 1_250), Ok(()), "one more after a quarter second");
        // Gone and refilled: forgotten; gone but not refilled: remembered.
        for _ in 0..4 {
            admission.disconnected(&config, a, 1_500);
        }
        admission.sweep(&config, 1_500);
        assert_eq!(admission.per_source.as_ref().map(HashMap::len), Some(1), "remembered while not refilled");
        assert!(admission.connection(&config, a, 1_500).is_ok());
        admission.sweep(&config, 2_000);
        assert_eq!(admission.per_source.as_ref().map(HashMap::len), Some(0));
        let off = Config { connection_rate_per_ip: 0, ..Config::default() };
        for _ in 0..1000 {
            assert_eq!(admission.connection(&off, a, 3_000), Ok(()));
            admission.connected(&off, a, 3_000);
            admission.request_done();
            admission.disconnected(&off, a, 3_000);
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
