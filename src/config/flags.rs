//! The flag table: every flag defined once (name, value word, default as
//! documented, help, how it sets the [`Config`]); the command line, the
//! environment (`WSHUB_<NAME>`), `--help` and `docs/configuration.md` all
//! come from it.
//!
//! Parsing is hand-rolled: a few dozen `--name value` flags do not justify
//! a command-line crate in a binary meant for small boxes. A bad value ends
//! startup with one line naming the flag and what it expects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use super::{Command, Config};
use crate::logger::LogFormat;
use crate::origin::{OriginPolicy, parse_host_name};
use crate::redis::RedisUrl;
use crate::topic::check_channel_prefix;

/// One flag.
pub struct Flag {
    pub name: &'static str,
    /// The value's placeholder in `--help` (`ADDR`); empty for a switch.
    pub value: &'static str,
    /// The default as `--help` and the docs show it.
    pub default: &'static str,
    pub help: &'static str,
    /// Given several times, each occurrence adds a value (from the
    /// environment: a comma-separated list).
    pub repeatable: bool,
    /// Its value is never printed back (errors show that it is wrong, not
    /// what it is).
    pub secret: bool,
    set: Setter,
}

/// How a flag sets the config.
#[derive(Clone, Copy)]
enum Setter {
    Value(fn(&mut Config, &str) -> Result<(), String>),
    /// A switch: `--name`, or `WSHUB_NAME=true|false`.
    Switch(fn(&mut Config, bool)),
}

impl Flag {
    /// `WSHUB_` and the name in upper snake case.
    pub fn env_name(&self) -> String {
        format!("WSHUB_{}", self.name.replace('-', "_").to_ascii_uppercase())
    }

    /// The value as an error line may show it: secrets are not shown, and
    /// a Redis URL's credentials are masked (a malformed URL may not parse
    /// far enough for its own redaction).
    fn shown(&self, value: &str) -> String {
        if self.secret {
            return "(not shown)".into();
        }
        if self.name != "redis" {
            return value.into();
        }
        let (scheme, rest) = value.split_once("://").map_or(("", value), |(s, r)| (s, r));
        match rest.rsplit_once('@') {
            Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => value.into(),
        }
    }
}

/// A flag with a value.
const fn flag(
    name: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
    set: fn(&mut Config, &str) -> Result<(), String>,
) -> Flag {
    Flag { name, value, default, help, repeatable: false, secret: false, set: Setter::Value(set) }
}

/// A switch (`--name`, or `WSHUB_NAME=true|false`).
const fn switch(name: &'static str, help: &'static str, set: fn(&mut Config, bool)) -> Flag {
    Flag { name, value: "", default: "off", help, repeatable: false, secret: false, set: Setter::Switch(set) }
}

pub const FLAGS: &[Flag] = &[
    flag(
        "listen",
        "ADDR",
        "127.0.0.1:8080",
        "TCP address to listen on (IPv4 or [IPv6]:port; port 0 picks one)",
        |c, v| {
            c.listen = address(v, "127.0.0.1:8080")?;
            Ok(())
        },
    ),
    flag(
        "admin-listen",
        "ADDR",
        "unset",
        "serve /publish, /healthz and /metrics only on this address, and only /ws on --listen",
        |c, v| {
            c.admin_listen = Some(address(v, "127.0.0.1:9090")?);
            Ok(())
        },
    ),
    flag(
        "max-message-size",
        "BYTES",
        "65536",
        "largest message a client may send, after reassembly; larger: close 1009",
        |c, v| {
            c.max_message_size = positive(v)?;
            Ok(())
        },
    ),
    flag("max-connections", "N", "10000", "WebSocket clients at most; further upgrades get HTTP 503", |c, v| {
        c.max_connections = positive(v)?;
        Ok(())
    }),
    flag("queue-messages", "N", "256", "per-client send queue bound, in messages", |c, v| {
        c.queue_messages = positive(v)?;
        Ok(())
    }),
    flag("queue-bytes", "BYTES", "1048576", "per-client send queue bound, in bytes", |c, v| {
        c.queue_bytes = positive(v)?;
        Ok(())
    }),
    flag(
        "max-buffered-bytes",
        "BYTES",
        "67108864",
        "bound on all bytes held for clients; over it the biggest holders get 1013",
        |c, v| {
            c.max_buffered_bytes = positive(v)?;
            Ok(())
        },
    ),
    flag(
        "message-timeout",
        "SECS",
        "10",
        "a partly received message must be complete by then, else close 1008",
        |c, v| {
            c.message_timeout = seconds(v)?;
            Ok(())
        },
    ),
    flag(
        "max-connections-per-ip",
        "N",
        "128",
        "connections from one IPv4 address or IPv6 /64, pending included; more are closed at once",
        |c, v| {
            c.max_connections_per_ip = positive(v)?;
            Ok(())
        },
    ),
    flag(
        "max-pending",
        "N",
        "1024",
        "connections still sending their HTTP request; more are closed at once",
        |c, v| {
            c.max_pending = positive(v)?;
            Ok(())
        },
    ),
    flag(
        "connection-rate-per-ip",
        "N",
        "100",
        "new connections per second from one IPv4 address or IPv6 /64 (burst: one second's worth; 0 = off)",
        |c, v| {
            c.connection_rate_per_ip = whole(v)?;
            Ok(())
        },
    ),
    flag(
        "rate-limit-messages",
        "N",
        "0",
        "data messages per second a client may send (burst: one second's worth; 0 = off)",
        |c, v| {
            c.rate_limit_messages = whole(v)?;
            Ok(())
        },
    ),
    flag("rate-limit-bytes", "BYTES", "0", "data bytes per second a client may send (0 = off)", |c, v| {
        c.rate_limit_bytes = whole(v)?;
        Ok(())
    }),
    flag("write-timeout", "SECS", "10", "drop a client whose queue makes no progress for this long", |c, v| {
        c.write_timeout = seconds(v)?;
        Ok(())
    }),
    flag(
        "write-delay",
        "MS",
        "0",
        "coalesce a client's writes: its queued frames go out when the oldest has waited this long (or fill a write, or the queue is half full); pongs and closes are never delayed (0 = off, at most 1000)",
        |c, v| {
            let ms = whole(v)?;
            if ms > 1000 {
                return Err("at most 1000 (milliseconds)".into());
            }
            c.write_delay = Duration::from_millis(ms as u64);
            Ok(())
        },
    ),
    switch("no-compression", "do not accept permessage-deflate (compression) offers", |c, on| {
        c.compression = !on;
    }),
    flag(
        "compression-min-size",
        "BYTES",
        "128",
        "messages shorter than this are sent uncompressed even to clients that negotiated compression",
        |c, v| {
            c.compression_min_size = whole(v)?;
            Ok(())
        },
    ),
    flag(
        "history",
        "N",
        "0",
        "messages kept per topic for replay and resume (/sse Last-Event-ID, ?since=, ?last=; 0 = off)",
        |c, v| {
            c.history = whole(v)?;
            Ok(())
        },
    ),
    flag(
        "history-bytes",
        "BYTES",
        "8388608",
        "bound on all bytes of history kept, oldest evicted first (also counted in --max-buffered-bytes)",
        |c, v| {
            c.history_bytes = whole(v)?;
            Ok(())
        },
    ),
    flag("history-ttl", "SECS", "0", "history older than this is evicted (0 = no age limit)", |c, v| {
        c.history_ttl = if v == "0" { Duration::ZERO } else { seconds(v)? };
        Ok(())
    }),
    flag("handshake-timeout", "SECS", "10", "close a connection whose request is not complete by then", |c, v| {
        c.handshake_timeout = seconds(v)?;
        Ok(())
    }),
    flag("ping-interval", "SECS", "54", "ping a client silent this long (below --idle-timeout)", |c, v| {
        c.ping_interval = seconds(v)?;
        Ok(())
    }),
    flag("idle-timeout", "SECS", "60", "drop a client silent (pongs included) this long", |c, v| {
        c.idle_timeout = seconds(v)?;
        Ok(())
    }),
    flag("shutdown-timeout", "SECS", "5", "on SIGINT/SIGTERM, flush, close 1001 and exit within this long", |c, v| {
        c.shutdown_timeout = seconds(v)?;
        Ok(())
    }),
    switch("no-echo", "do not send a client its own messages", |c, on| c.no_echo = on),
    Flag {
        secret: true,
        ..flag(
            "publish-token",
            "TOKEN",
            "unset",
            "bearer token for POST /publish and /metrics (unset: loopback only); prefer WSHUB_PUBLISH_TOKEN",
            |c, v| {
                if v.is_empty() {
                    return Err("must not be empty".into());
                }
                c.publish_token = Some(v.into());
                Ok(())
            },
        )
    },
    flag(
        "allowed-origins",
        "LIST",
        "same-origin",
        "origins browsers may connect and publish from: https://a.example, https://*.example.com, or *",
        |c, v| {
            c.allowed_origins = OriginPolicy::parse(v)?;
            Ok(())
        },
    ),
    flag(
        "allowed-hosts",
        "LIST",
        "unset",
        "host names browsers may reach the hub by, besides IP literals and localhost",
        |c, v| {
            c.allowed_hosts =
                v.split(',').filter(|h| !h.trim_ascii().is_empty()).map(parse_host_name).collect::<Result<_, _>>()?;
            if c.allowed_hosts.is_empty() {
                return Err("expected a comma-separated list of host names".into());
            }
            Ok(())
        },
    ),
    switch("no-client-publish", "/ws clients only receive; a data frame from one: close 1008", |c, on| {
        c.no_client_publish = on
    }),
    flag(
        "jwt-secret-file",
        "PATH",
        "unset",
        "HS256 secret (the file's bytes, one trailing newline ignored); /ws then needs a token",
        |c, v| {
            c.jwt_secret_file = Some(path(v)?);
            Ok(())
        },
    ),
    Flag {
        repeatable: true,
        ..flag(
            "jwt-public-key-file",
            "PATH",
            "unset",
            "PEM public key, P-256 (ES256) or Ed25519 (EdDSA); repeatable (environment: comma-separated)",
            |c, v| {
                c.jwt_public_key_files.push(path(v)?);
                Ok(())
            },
        )
    },
    flag("jwt-issuer", "ISS", "unset", "required iss claim", |c, v| {
        c.jwt_issuer = Some(non_empty(v)?);
        Ok(())
    }),
    flag("jwt-audience", "AUD", "unset", "required aud claim (the string, or one entry of the list)", |c, v| {
        c.jwt_audience = Some(non_empty(v)?);
        Ok(())
    }),
    flag("jwt-leeway", "SECS", "30", "clock skew allowed for exp and nbf (whole seconds)", |c, v| {
        c.jwt_leeway = Duration::from_secs(whole(v)? as u64);
        Ok(())
    }),
    flag(
        "tls-cert",
        "PATH",
        "unset",
        "PEM certificate chain: the listener speaks TLS (wss://); SIGHUP reloads",
        |c, v| {
            c.tls_cert = Some(path(v)?);
            Ok(())
        },
    ),
    flag("tls-key", "PATH", "unset", "PEM private key of --tls-cert", |c, v| {
        c.tls_key = Some(path(v)?);
        Ok(())
    }),
    flag("tls-client-ca", "PATH", "unset", "PEM CA: clients must present a certificate it signed", |c, v| {
        c.tls_client_ca = Some(path(v)?);
        Ok(())
    }),
    switch("demo", "serve a small page at GET / to try the hub from a browser", |c, on| c.demo = on),
    flag(
        "log-format",
        "FORMAT",
        "text",
        "text, or json (one object per line, with peer, reason, code, status)",
        |c, v| {
            c.log_format = match v {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err("expected text or json".into()),
            };
            Ok(())
        },
    ),
    flag(
        "redis",
        "URL",
        "unset",
        "redis://[user:pass@]host:port[/db] or rediss://: share topics with other hubs; prefer WSHUB_REDIS",
        |c, v| {
            c.redis = Some(RedisUrl::parse(v)?);
            Ok(())
        },
    ),
    flag(
        "redis-prefix",
        "PREFIX",
        "wshub:",
        "Redis channel = prefix + topic; a name then one separator (':' or one no topic holds)",
        |c, v| {
            check_channel_prefix(v)?;
            c.redis_prefix = v.to_string();
            Ok(())
        },
    ),
    switch("reuse-port", "set SO_REUSEPORT, so several hubs can listen on one port", |c, on| c.reuse_port = on),
    flag("log-level", "LEVEL", "info", "error, warn, info, debug or trace (also RUST_LOG)", |c, v| {
        c.log_level = v.parse().map_err(|_| "expected error, warn, info, debug or trace")?;
        Ok(())
    }),
];

impl Flag {
    /// Out of line: inlined, the loop over the constant table was unrolled
    /// with every setter inlined into it (10 KiB of a small binary).
    #[inline(never)]
    fn apply(&self, config: &mut Config, value: &str) -> Result<(), String> {
        match self.set {
            Setter::Value(set) => set(config, value),
            Setter::Switch(set) => {
                set(config, switch_value(value)?);
                Ok(())
            }
        }
    }
}

/// Applies one flag's value (for the tests of the table).
#[cfg(test)]
pub fn apply_for_test(flag: &Flag, config: &mut Config, value: &str) -> Result<(), String> {
    flag.apply(config, value)
}

/// `--help`.
pub fn usage() -> String {
    let mut out = String::from(
        "wshub: a single-threaded WebSocket publish/subscribe hub\n\n\
         Usage: wshub [OPTIONS]\n\nOptions (each also read from WSHUB_<NAME>, e.g. WSHUB_LISTEN):\n",
    );
    for flag in FLAGS {
        let left = format!("--{} {}", flag.name, flag.value);
        out.push_str(&format!("  {left:<28} {} [{}]\n", flag.help, flag.default));
    }
    out.push_str("  -h, --help                   print this help\n  -V, --version                print the version\n");
    out
}

/// The flag table of `docs/configuration.md` (a test keeps the file in
/// step with this table).
#[cfg(test)]
pub fn flag_table_markdown() -> String {
    let mut out = String::from("| flag | environment | default | meaning |\n| --- | --- | --- | --- |\n");
    for flag in FLAGS {
        let name = if flag.value.is_empty() {
            format!("`--{}`", flag.name)
        } else {
            format!("`--{} {}`", flag.name, flag.value)
        };
        out.push_str(&format!("| {name} | `{}` | `{}` | {} |\n", flag.env_name(), flag.default, flag.help));
    }
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
            let from_flags: Vec<String> =
                given.iter().filter(|(n, _)| *n == flag.name).map(|(_, v)| v.clone().unwrap_or_default()).collect();
            let (values, source) = match from_flags.last() {
                // The last one wins, unless each adds a value.
                Some(last) if !flag.repeatable => (vec![last.clone()], format!("--{}", flag.name)),
                Some(_) => (from_flags, format!("--{}", flag.name)),
                None => match env(&env_name) {
                    Some(list) if flag.repeatable => (list.split(',').map(str::to_string).collect(), env_name),
                    Some(value) => (vec![value], env_name),
                    None => continue,
                },
            };
            for value in values {
                flag.apply(&mut config, &value)
                    .map_err(|why| format!("invalid {source} '{}': {why}", flag.shown(&value)))?;
            }
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
}

/// An address, with an example of one in the error.
fn address(value: &str, example: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("expected IP:PORT, e.g. {example} or [::1]:{}", example.rsplit(':').next().unwrap_or("8080"))
    })
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

/// A switch without a value is on; from the environment, a boolean word.
fn switch_value(value: &str) -> Result<bool, String> {
    match value {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn whole(value: &str) -> Result<usize, String> {
    value.parse::<usize>().map_err(|_| "expected a whole number (0 turns it off)".into())
}

/// Seconds as a decimal (`10`, `0.5`), to the nanosecond; parsed as
/// integers (float parsing is sizeable code for a small binary).
fn seconds(value: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected seconds, e.g. 10 or 0.5";
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return Err(EXPECTED.into());
    }
    let secs: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| EXPECTED)? };
    let nanos: u32 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().map_err(|_| EXPECTED)? };
    let duration = Duration::new(secs, nanos);
    if duration.is_zero() || secs >= 1_000_000_000 {
        return Err("must be more than 0, and less than a billion".into());
    }
    Ok(duration)
}
