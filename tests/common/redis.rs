//! A real `redis-server` (Debian's package) for the scale-out tests: on a
//! free 127.0.0.1 port, without persistence, killed (by its PID) when
//! dropped. `.ci/run` installs it; `WSHUB_SKIP_REDIS=1` skips these tests
//! on a machine without it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// False (and the test should return) only when `WSHUB_SKIP_REDIS` is set
/// and there is no redis-server; without either, the test fails and says why.
pub fn available() -> bool {
    if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("WSHUB_SKIP_REDIS").is_some(),
        "the Redis tests need redis-server (apt-get install redis-server), or WSHUB_SKIP_REDIS=1 to skip them"
    );
    false
}

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// With [`Redis::start_tls`]: the TLS port, and the certificate and key
    /// it serves.
    pub tls: Option<(u16, PathBuf, PathBuf)>,
}

impl Redis {
    /// Starts a Redis on a free port and waits until it answers.
    pub fn start() -> Redis {
        let mut redis = Redis { child: None, port: free_port(), tls: None };
        redis.restart();
        redis
    }

    /// Starts a Redis that also speaks TLS on a second port (clients need
    /// no certificate); the plain port stays for the test's own commands.
    pub fn start_tls(cert: PathBuf, key: PathBuf) -> Redis {
        let mut redis = Redis { child: None, port: free_port(), tls: Some((free_port(), cert, key)) };
        redis.restart();
        redis
    }

    /// The `--redis` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn parsed_url(&self) -> wshub::RedisUrl {
        wshub::RedisUrl::parse(&self.url()).unwrap()
    }

    /// Starts it (again) on its port, with nothing saved from before.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"]);
        if let Some((port, cert, key)) = &self.tls {
            command.args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"]);
            command.arg("--tls-cert-file").arg(cert).arg("--tls-key-file").arg(key).arg("--tls-ca-cert-file").arg(cert);
        }
        let child = command.stdout(Stdio::null()).spawn().expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while self.try_command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Subscribers of a channel (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> u64 {
        let reply = self.command(&["PUBSUB", "NUMSUB", channel]);
        // *2 $len channel :N
        reply.lines().last().and_then(|l| l.strip_prefix(':')).and_then(|n| n.parse().ok()).expect(&reply)
    }

    /// Publishes straight to a channel, as a backend would.
    pub fn publish(&self, channel: &str, message: &str) -> u64 {
        let reply = self.command(&["PUBLISH", channel, message]);
        reply.trim().strip_prefix(':').and_then(|n| n.parse().ok()).expect(&reply)
    }

    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args).unwrap_or_else(|| panic!("Redis did not answer {args:?}"))
    }

    /// One command on a fresh connection; the reply's raw text.
    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        // The replies these tests read end with a status, error or integer
        // line (`PUBSUB NUMSUB`'s last element is the count).
        let mut reply = String::new();
        let mut buf = [0; 4096];
        while !reply.ends_with("\r\n") || !reply.lines().last().is_some_and(|l| l.starts_with(['+', '-', ':'])) {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            reply.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Some(reply)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
