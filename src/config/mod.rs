//! Settings: the [`Config`] every part of the hub reads, its defaults (the
//! contract's), and the checks that settings make sense together. `flags`
//! is the one table that fills it from the command line and the
//! environment, and documents it.

mod flags;

pub use flags::usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use crate::logger::LogFormat;
use crate::origin::OriginPolicy;
use crate::redis::RedisUrl;

/// Everything the server can be told. `Default` matches the binary's defaults.
/// (No `PartialEq`: it will hold key material.)
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// When set, `/publish` and `/healthz` are served only here, and the
    /// public listener serves only `/ws`.
    pub admin_listen: Option<SocketAddr>,
    pub max_message_size: usize,
    pub max_connections: usize,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub write_timeout: Duration,
    /// `--write-delay`: a client's data frames wait until the oldest has
    /// waited this long, so a steady stream leaves in fewer writes (zero:
    /// written at the end of the turn that queued them).
    pub write_delay: Duration,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub no_echo: bool,
    /// Accept `permessage-deflate` offers (`--no-compression`: never);
    /// only with the `deflate` feature.
    pub compression: bool,
    /// Messages shorter than this go uncompressed to every client.
    pub compression_min_size: usize,
    /// Messages kept per topic for replay and resume (0: history off).
    pub history: usize,
    /// Bound on the bytes of all history kept (oldest evicted first).
    pub history_bytes: usize,
    /// History older than this is evicted (zero: no age limit).
    pub history_ttl: Duration,
    /// `--publish-token`: never shown by `Debug` or in errors.
    pub publish_token: Option<Secret>,
    /// Which pages may open `/ws` or publish from a browser (`Origin`).
    pub allowed_origins: OriginPolicy,
    /// Host names the hub answers browsers (and the credential-free
    /// loopback routes) by, besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// `/ws` clients only receive; a data frame from one: close 1008.
    pub no_client_publish: bool,
    /// HS256 secret file (`--jwt-secret-file`). With any JWT key set, `/ws`
    /// needs a valid token and its grants decide the topics.
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public keys, P-256 (ES256) or Ed25519 (EdDSA); several for rotation.
    pub jwt_public_key_files: Vec<PathBuf>,
    /// Required `iss`, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` (the claim or one of its list), when set.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// Serve the demo page at `GET /`.
    pub demo: bool,
    /// PEM certificate chain and private key: the listener speaks TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate chained to one.
    pub tls_client_ca: Option<PathBuf>,
    /// Bound on all bytes held for clients (queued frames, counted once
    /// however many queues share them, and partly received requests and
    /// messages); over it, the clients holding the most are dropped (1013).
    pub max_buffered_bytes: usize,
    /// A message (or frame) partly received must be complete by then (1008).
    pub message_timeout: Duration,
    /// Connections from one IPv4 address or IPv6 /64, pending included.
    pub max_connections_per_ip: usize,
    /// Connections that have not finished their HTTP request.
    pub max_pending: usize,
    /// New connections per second from one IPv4 address or IPv6 /64 (burst:
    /// one second's worth); 0: no limit.
    pub connection_rate_per_ip: usize,
    /// Data messages per second a client may send (0: no limit).
    pub rate_limit_messages: usize,
    /// Data bytes per second a client may send (0: no limit).
    pub rate_limit_bytes: usize,
    pub log_level: LevelFilter,
    /// `--log-format`: text lines or one JSON object per line.
    pub log_format: LogFormat,
    /// Bound of the queue between [`crate::Publisher`]s and the loop.
    pub publisher_queue: usize,
    /// Shut down gracefully on SIGINT and SIGTERM. The binary turns this on;
    /// a library user decides for their own process.
    pub handle_signals: bool,
    /// systemd integration: use a listening socket passed by socket
    /// activation (`LISTEN_FDS`, fd 3) instead of binding `listen`, and send
    /// `READY=1` / `STOPPING=1` to `NOTIFY_SOCKET`. The binary turns this on.
    pub systemd: bool,
    /// `--redis`: share topics with other hubs through this Redis.
    pub redis: Option<RedisUrl>,
    /// Redis channel name = this prefix + topic.
    pub redis_prefix: String,
    /// `SO_REUSEPORT` on the listener: several hubs may share its port.
    pub reuse_port: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            max_message_size: 65536,
            max_connections: 10_000,
            queue_messages: 256,
            queue_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            write_delay: Duration::ZERO,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(54),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(5),
            no_echo: false,
            compression: true,
            compression_min_size: 128,
            history: 0,
            history_bytes: 8 * 1024 * 1024,
            history_ttl: Duration::ZERO,
            publish_token: None,
            allowed_origins: OriginPolicy::default(),
            allowed_hosts: Vec::new(),
            no_client_publish: false,
            jwt_secret_file: None,
            jwt_public_key_files: Vec::new(),
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Duration::from_secs(30),
            demo: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_buffered_bytes: 64 * 1024 * 1024,
            message_timeout: Duration::from_secs(10),
            max_connections_per_ip: 128,
            max_pending: 1024,
            connection_rate_per_ip: 100,
            rate_limit_messages: 0,
            rate_limit_bytes: 0,
            log_level: LevelFilter::Info,
            log_format: LogFormat::Text,
            publisher_queue: 1024,
            handle_signals: false,
            systemd: false,
            redis: None,
            redis_prefix: "wshub:".into(),
            reuse_port: false,
        }
    }
}

/// A secret setting: its `Debug` shows that it is set, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

impl Config {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_interval >= self.idle_timeout {
            return Err(format!(
                "--ping-interval ({} ms) must be shorter than --idle-timeout ({} ms), or silent clients are dropped before they are pinged",
                self.ping_interval.as_millis() as u64,
                self.idle_timeout.as_millis() as u64
            ));
        }
        if self.write_delay >= self.write_timeout {
            return Err(format!(
                "--write-delay ({} ms) must be shorter than --write-timeout ({} ms)",
                self.write_delay.as_millis() as u64,
                self.write_timeout.as_millis() as u64
            ));
        }
        if self.max_message_size > (1 << 30) {
            return Err("--max-message-size is capped at 1 GiB".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_args(args.iter().map(|s| s.to_string()), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env) {
            Ok(Command::Run(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        for flag in flags::FLAGS {
            if matches!(flag.default, "unset" | "off" | "same-origin") {
                continue;
            }
            let mut config = Config::default();
            let before = format!("{config:?}");
            flags::apply_for_test(flag, &mut config, flag.default).unwrap();
            assert_eq!(format!("{config:?}"), before, "--{} {} is not the default", flag.name, flag.default);
        }
    }

    /// `docs/configuration.md` carries the flag table as generated here;
    /// `WSHUB_UPDATE_DOCS=1 cargo test --lib config` rewrites it.
    #[test]
    fn the_configuration_doc_has_the_flag_table() {
        const BEGIN: &str = "<!-- generated from src/config/flags.rs: do not edit by hand -->\n";
        const END: &str = "<!-- end of the generated table -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
        let (before, rest) = doc.split_once(BEGIN).expect("the begin marker");
        let (current, after) = rest.split_once(END).expect("the end marker");
        let table = flags::flag_table_markdown();
        if std::env::var_os("WSHUB_UPDATE_DOCS").is_some() {
            std::fs::write(&path, format!("{before}{BEGIN}{table}{END}{after}")).unwrap();
            return;
        }
        assert_eq!(current, table, "docs/configuration.md is stale: WSHUB_UPDATE_DOCS=1 cargo test --lib config");
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[], &[]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            (c.max_message_size, c.max_connections, c.queue_messages, c.queue_bytes),
            (65536, 10000, 256, 1048576)
        );
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert!(c.handle_signals);
    }

    #[test]
    fn flags_env_and_precedence() {
        let c = config(
            &["--listen", "[::1]:0", "--no-echo", "--write-timeout=0.5", "--max-message-size", "10"],
            &[
                ("WSHUB_MAX_MESSAGE_SIZE", "99"),
                ("WSHUB_QUEUE_MESSAGES", "7"),
                ("RUST_LOG", "debug"),
                ("WSHUB_WRITE_DELAY", "20"),
            ],
        );
        assert_eq!(c.listen.to_string(), "[::1]:0");
        assert_eq!(c.write_delay, Duration::from_millis(20));
        assert!(c.no_echo);
        assert_eq!(c.write_timeout, Duration::from_millis(500));
        assert_eq!(c.max_message_size, 10, "flag wins over environment");
        assert_eq!(c.queue_messages, 7);
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert!(config(&[], &[("WSHUB_NO_ECHO", "true")]).no_echo);
        assert!(config(&["--no-client-publish"], &[]).no_client_publish);
        let keys = config(&["--jwt-public-key-file", "a.pem", "--jwt-public-key-file=b.pem"], &[]);
        assert_eq!(keys.jwt_public_key_files, [PathBuf::from("a.pem"), PathBuf::from("b.pem")], "repeatable");
        let from_env = config(&[], &[("WSHUB_JWT_PUBLIC_KEY_FILE", "a.pem,b.pem"), ("WSHUB_JWT_LEEWAY", "0")]);
        assert_eq!(from_env.jwt_public_key_files.len(), 2);
        assert_eq!(from_env.jwt_leeway, Duration::ZERO);
        assert_eq!(config(&[], &[]).jwt_leeway, Duration::from_secs(30));
        let origins = config(&[], &[("WSHUB_ALLOWED_ORIGINS", "https://*.example.com")]).allowed_origins;
        assert!(
            origins.allows("https://a.example.com", "hub", true) && !origins.allows("https://evil.com", "hub", true)
        );
        assert_eq!(config(&["--log-level", "warn"], &[("RUST_LOG", "debug")]).log_level, LevelFilter::Warn);
        assert_eq!(config(&["--log-format", "json"], &[]).log_format, LogFormat::Json);
        assert_eq!(config(&[], &[]).log_format, LogFormat::Text);
        let scaled = config(&["--redis", "redis://:pw@127.0.0.1:6390/2", "--reuse-port"], &[]);
        let redis = scaled.redis.unwrap();
        assert_eq!((redis.port, redis.db, redis.password.as_deref()), (6390, 2, Some("pw")));
        assert_eq!(scaled.redis_prefix, "wshub:");
        assert!(scaled.reuse_port);
        assert_eq!(config(&[], &[("WSHUB_REDIS_PREFIX", "app1:")]).redis_prefix, "app1:");
        assert_eq!(config(&["--redis-prefix", "tenant-7/"], &[]).redis_prefix, "tenant-7/");
    }

    #[test]
    fn bad_values_say_which_flag() {
        for (args, needle) in [
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--queue-messages", "0"], "--queue-messages"),
            (&["--idle-timeout", "-1"], "--idle-timeout"),
            (&["--bogus"], "--bogus"),
            (&["--listen"], "needs a value"),
            (&["--ping-interval", "70"], "--ping-interval"),
            (&["--allowed-origins", "example.com"], "--allowed-origins"),
            (&["--no-client-publish=yes"], "takes no value"),
            (&["--log-format", "xml"], "--log-format"),
            (&["--redis", "localhost:6379"], "--redis"),
            (&["--redis-prefix", "wshub:b:"], "--redis-prefix"),
            (&["--redis-prefix", "app"], "--redis-prefix"),
            (&["--redis-prefix", ""], "--redis-prefix"),
            (&["--redis-prefix", "a b:"], "--redis-prefix"),
            (&["--write-delay", "1001"], "--write-delay"),
            (&["--write-delay", "0.5"], "--write-delay"),
            (&["--write-delay", "900", "--write-timeout", "0.5"], "--write-delay"),
        ] {
            let err = parse(args, &[]).unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        assert!(parse(&[], &[("WSHUB_MAX_CONNECTIONS", "many")]).unwrap_err().contains("WSHUB_MAX_CONNECTIONS"));
        assert!(matches!(parse(&["--help"], &[]), Ok(Command::Help)));
        // Secrets are not printed back, in errors or by Debug.
        let err = parse(&["--redis", "redis://user:hunter2@host:port"], &[]).unwrap_err();
        assert!(err.contains("redis://***@host:port") && !err.contains("hunter2"), "{err}");
        for url in ["redis://:hunter2@h/db", "user:hunter2@h:6379"] {
            let err = parse(&[], &[("WSHUB_REDIS", url)]).unwrap_err();
            assert!(!err.contains("hunter2") && err.contains("***@h"), "{err}");
        }
        let err = parse(&["--publish-token="], &[]).unwrap_err();
        assert!(err.contains("--publish-token"), "{err}");
        let config = config(&["--publish-token", "hunter2", "--redis", "redis://:hunter2@h"], &[]);
        assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
        assert!(matches!(parse(&["-V"], &[]), Ok(Command::Version)));
    }
}
