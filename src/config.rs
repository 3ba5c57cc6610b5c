//! Settings, from flags, `WSHUB_*` environment variables and defaults.
//!
//! Parsing is hand-rolled: a dozen `--name value` flags do not justify a
//! command-line crate in a binary meant for small boxes. A bad value ends
//! startup with one line naming the flag and what it expects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use crate::logger::LogFormat;
use crate::origin::{OriginPolicy, parse_host_name};
use crate::redis::RedisUrl;
use crate::topic::check_channel_prefix;

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
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub no_echo: bool,
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
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(54),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(5),
            no_echo: false,
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

/// A flag's value as an error line may show it: secrets are not shown, and
/// a Redis URL's credentials are masked (a malformed URL may not parse far
/// enough for its own redaction).
fn shown(flag: &str, value: &str) -> String {
    match flag {
        "publish-token" => "(not shown)".into(),
        "redis" => {
            let (scheme, rest) = value.split_once("://").map_or(("", value), |(s, r)| (s, r));
            match rest.rsplit_once('@') {
                Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => value.into(),
            }
        }
        _ => value.into(),
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

struct Flag {
    name: &'static str,
    value: &'static str,
    help: &'static str,
}

impl Flag {
    /// Given several times, each occurrence adds a value (from the
    /// environment: a comma-separated list).
    fn repeatable(&self) -> bool {
        self.name == "jwt-public-key-file"
    }

    fn env_name(&self) -> String {
        format!("WSHUB_{}", self.name.replace('-', "_").to_uppercase())
    }
}

const FLAGS: &[Flag] = &[
    Flag { name: "listen", value: "ADDR", help: "TCP address to listen on [127.0.0.1:8080]" },
    Flag {
        name: "admin-listen",
        value: "ADDR",
        help: "serve /publish and /healthz only on this address (unset: on --listen)",
    },
    Flag { name: "max-message-size", value: "BYTES", help: "largest message a client may send [65536]" },
    Flag { name: "max-connections", value: "N", help: "WebSocket clients at most; more get HTTP 503 [10000]" },
    Flag { name: "queue-messages", value: "N", help: "per-client send queue bound, in messages [256]" },
    Flag { name: "queue-bytes", value: "BYTES", help: "per-client send queue bound, in bytes [1048576]" },
    Flag {
        name: "max-buffered-bytes",
        value: "BYTES",
        help: "bound on all bytes held for clients; over it the biggest holders get 1013 [67108864]",
    },
    Flag { name: "message-timeout", value: "SECS", help: "a partly received message must be complete by then [10]" },
    Flag {
        name: "max-connections-per-ip",
        value: "N",
        help: "connections from one IPv4 address or IPv6 /64, pending included [128]",
    },
    Flag { name: "max-pending", value: "N", help: "connections still sending their HTTP request [1024]" },
    Flag {
        name: "connection-rate-per-ip",
        value: "N",
        help: "new connections per second from one IPv4 address or IPv6 /64, 0 = off [100]",
    },
    Flag { name: "rate-limit-messages", value: "N", help: "data messages per second per client, 0 = off [0]" },
    Flag { name: "rate-limit-bytes", value: "BYTES", help: "data bytes per second per client, 0 = off [0]" },
    Flag { name: "write-timeout", value: "SECS", help: "drop a client whose queue makes no progress this long [10]" },
    Flag { name: "handshake-timeout", value: "SECS", help: "close a connection not upgraded by then [10]" },
    Flag { name: "ping-interval", value: "SECS", help: "ping a client silent this long [54]" },
    Flag { name: "idle-timeout", value: "SECS", help: "drop a client silent this long [60]" },
    Flag { name: "shutdown-timeout", value: "SECS", help: "on SIGINT/SIGTERM, exit after at most this long [5]" },
    Flag { name: "no-echo", value: "", help: "do not send a client its own messages" },
    Flag { name: "publish-token", value: "TOKEN", help: "bearer token for POST /publish (default: loopback only)" },
    Flag {
        name: "allowed-origins",
        value: "LIST",
        help: "origins browsers may connect from: https://a.example, https://*.example.com or * [same-origin]",
    },
    Flag {
        name: "allowed-hosts",
        value: "LIST",
        help: "host names browsers may reach the hub by, besides IP literals and localhost [unset]",
    },
    Flag { name: "no-client-publish", value: "", help: "/ws clients only receive; a data frame from one: close 1008" },
    Flag {
        name: "jwt-secret-file",
        value: "PATH",
        help: "HS256 secret (file bytes, one trailing newline ignored); /ws then needs a token",
    },
    Flag {
        name: "jwt-public-key-file",
        value: "PATH",
        help: "PEM public key, P-256 (ES256) or Ed25519 (EdDSA); repeatable (environment: comma-separated)",
    },
    Flag { name: "jwt-issuer", value: "ISS", help: "required iss claim [unset]" },
    Flag { name: "jwt-audience", value: "AUD", help: "required aud claim [unset]" },
    Flag { name: "jwt-leeway", value: "SECS", help: "clock skew allowed for exp and nbf [30]" },
    Flag { name: "tls-cert", value: "PATH", help: "PEM certificate chain: the listener speaks TLS (wss://)" },
    Flag { name: "tls-key", value: "PATH", help: "PEM private key of --tls-cert" },
    Flag { name: "tls-client-ca", value: "PATH", help: "PEM CA: clients must present a certificate it signed" },
    Flag { name: "demo", value: "", help: "serve a small page at GET / to try the hub from a browser" },
    Flag {
        name: "log-format",
        value: "FORMAT",
        help: "text or json (one object per line, with peer, reason, code) [text]",
    },
    Flag {
        name: "redis",
        value: "URL",
        help: "redis://[user:pass@]host:port[/db]: share topics with other hubs through Redis pub/sub",
    },
    Flag { name: "redis-prefix", value: "PREFIX", help: "Redis channel name = prefix + topic [wshub:]" },
    Flag { name: "reuse-port", value: "", help: "set SO_REUSEPORT, so several hubs can listen on one port" },
    Flag { name: "log-level", value: "LEVEL", help: "error, warn, info, debug or trace [info] (also RUST_LOG)" },
];

pub fn usage() -> String {
    let mut out = String::from(
        "wshub: a single-threaded WebSocket publish/subscribe hub\n\n\
         Usage: wshub [OPTIONS]\n\nOptions (each also read from WSHUB_<NAME>, e.g. WSHUB_LISTEN):\n",
    );
    for flag in FLAGS {
        let left = format!("--{} {}", flag.name, flag.value);
        out.push_str(&format!("  {left:<28} {}\n", flag.help));
    }
    out.push_str("  -h, --help                   print this help\n  -V, --version                print the version\n");
    out
}

impl Config {
    /// Reads flags (`args` without the program name), then the environment
    /// through `env` for flags not given, then defaults.
    pub fn from_args<I, E>(args: I, env: E) -> Result<Command, String>
    where
        I: IntoIterator<Item = String>,
        E: Fn(&str) -> Option<String>,
    {
        let mut given: Vec<(&'static str, Option<String>)> = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                _ => {}
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument '{arg}' (see --help)"));
            };
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (body, None),
            };
            let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
                return Err(format!("unknown flag '--{name}' (see --help)"));
            };
            let value = if flag.value.is_empty() {
                if inline.is_some() {
                    return Err(format!("--{name} takes no value"));
                }
                None
            } else {
                match inline.or_else(|| args.next()) {
                    Some(v) => Some(v),
                    None => return Err(format!("--{name} needs a value {}", flag.value)),
                }
            };
            given.push((flag.name, value));
        }

        let mut config = Config { handle_signals: true, systemd: true, ..Config::default() };
        for flag in FLAGS {
            let env_name = flag.env_name();
            if flag.repeatable() {
                let values: Vec<String> =
                    given.iter().filter(|(n, _)| *n == flag.name).flat_map(|(_, v)| v.clone()).collect();
                let (values, source) = match env(&env_name) {
                    Some(list) if values.is_empty() => (list.split(',').map(str::to_string).collect(), env_name),
                    _ => (values, format!("--{}", flag.name)),
                };
                for value in values {
                    config
                        .set(flag.name, &value)
                        .map_err(|why| format!("invalid {source} '{}': {why}", shown(flag.name, &value)))?;
                }
                continue;
            }
            let from_flag = given.iter().rev().find(|(n, _)| *n == flag.name);
            let (value, source) = match from_flag {
                Some((_, value)) => (value.clone().or_else(|| Some(String::new())), format!("--{}", flag.name)),
                None => match env(&env_name) {
                    Some(v) => (Some(v), env_name.clone()),
                    None => continue,
                },
            };
            let value = value.unwrap_or_default();
            config
                .set(flag.name, &value)
                .map_err(|why| format!("invalid {source} '{}': {why}", shown(flag.name, &value)))?;
        }
        let level_given = given.iter().any(|(n, _)| *n == "log-level") || env("WSHUB_LOG_LEVEL").is_some();
        if let Some(level) = env("RUST_LOG").and_then(|v| v.parse::<LevelFilter>().ok())
            && !level_given
        {
            config.log_level = level;
        }
        config.validate()?;
        Ok(Command::Run(Box::new(config)))
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "jwt-secret-file" => self.jwt_secret_file = Some(path(value)?),
            "jwt-public-key-file" => self.jwt_public_key_files.push(path(value)?),
            "jwt-issuer" => self.jwt_issuer = Some(non_empty(value)?),
            "jwt-audience" => self.jwt_audience = Some(non_empty(value)?),
            "jwt-leeway" => self.jwt_leeway = Duration::from_secs(whole(value)? as u64),
            "admin-listen" => {
                self.admin_listen =
                    Some(value.parse().map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:9090 or [::1]:9090")?)
            }
            "listen" => {
                self.listen = value.parse().map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")?
            }
            "max-message-size" => self.max_message_size = positive(value)?,
            "max-connections" => self.max_connections = positive(value)?,
            "queue-messages" => self.queue_messages = positive(value)?,
            "queue-bytes" => self.queue_bytes = positive(value)?,
            "max-buffered-bytes" => self.max_buffered_bytes = positive(value)?,
            "message-timeout" => self.message_timeout = seconds(value)?,
            "max-connections-per-ip" => self.max_connections_per_ip = positive(value)?,
            "max-pending" => self.max_pending = positive(value)?,
            "connection-rate-per-ip" => self.connection_rate_per_ip = whole(value)?,
            "rate-limit-messages" => self.rate_limit_messages = whole(value)?,
            "rate-limit-bytes" => self.rate_limit_bytes = whole(value)?,
            "write-timeout" => self.write_timeout = seconds(value)?,
            "handshake-timeout" => self.handshake_timeout = seconds(value)?,
            "ping-interval" => self.ping_interval = seconds(value)?,
            "idle-timeout" => self.idle_timeout = seconds(value)?,
            "shutdown-timeout" => self.shutdown_timeout = seconds(value)?,
            "no-echo" => self.no_echo = switch(value)?,
            "no-client-publish" => self.no_client_publish = switch(value)?,
            "demo" => self.demo = switch(value)?,
            "redis" => self.redis = Some(RedisUrl::parse(value)?),
            "redis-prefix" => {
                check_channel_prefix(value)?;
                self.redis_prefix = value.to_string();
            }
            "reuse-port" => self.reuse_port = switch(value)?,
            "tls-cert" => self.tls_cert = Some(path(value)?),
            "tls-key" => self.tls_key = Some(path(value)?),
            "tls-client-ca" => self.tls_client_ca = Some(path(value)?),
            "allowed-origins" => self.allowed_origins = OriginPolicy::parse(value)?,
            "allowed-hosts" => {
                self.allowed_hosts =
                    value.split(',').filter(|h| !h.trim().is_empty()).map(parse_host_name).collect::<Result<_, _>>()?;
                if self.allowed_hosts.is_empty() {
                    return Err("expected a comma-separated list of host names".into());
                }
            }
            "publish-token" if value.is_empty() => return Err("must not be empty".into()),
            "publish-token" => self.publish_token = Some(value.into()),
            "log-format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err("expected text or json".into()),
                }
            }
            "log-level" => self.log_level = value.parse().map_err(|_| "expected error, warn, info, debug or trace")?,
            _ => return Err("unknown setting".into()),
        }
        Ok(())
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_interval >= self.idle_timeout {
            return Err(format!(
                "--ping-interval ({:?}) must be shorter than --idle-timeout ({:?}), or silent clients are dropped before they are pinged",
                self.ping_interval, self.idle_timeout
            ));
        }
        if self.max_message_size > (1 << 30) {
            return Err("--max-message-size is capped at 1 GiB".into());
        }
        Ok(())
    }
}

fn path(value: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(non_empty(value)?))
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() { Err("must not be empty".into()) } else { Ok(value.to_string()) }
}

fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number".into()),
    }
}

/// A flag without a value is on; from the environment, a boolean word.
fn switch(value: &str) -> Result<bool, String> {
    match value {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn whole(value: &str) -> Result<usize, String> {
    value.parse::<usize>().map_err(|_| "expected a whole number (0 turns it off)".into())
}

fn seconds(value: &str) -> Result<Duration, String> {
    let secs: f64 = value.parse().map_err(|_| "expected seconds, e.g. 10 or 0.5")?;
    if !(secs > 0.0 && secs < 1e9) {
        return Err("must be more than 0".into());
    }
    Ok(Duration::from_secs_f64(secs))
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
            &[("WSHUB_MAX_MESSAGE_SIZE", "99"), ("WSHUB_QUEUE_MESSAGES", "7"), ("RUST_LOG", "debug")],
        );
        assert_eq!(c.listen.to_string(), "[::1]:0");
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
