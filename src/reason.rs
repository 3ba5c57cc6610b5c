//! Why a connection ended. Every way out is one value here, and the value
//! carries what the exit path needs: the log level, the log line, and the
//! counter it lands in. The hub records a reason once per connection.

use std::fmt;
use std::io;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::frame::ProtocolError;
use crate::http::Rejection;
use crate::log_limit::LineLimiter;

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The HTTP request was answered with an error status.
    Rejected(Rejection),
    /// The peer broke RFC 6455; closed with the error's code.
    Protocol(ProtocolError),
    /// Send queue full or stalled: closed with 1013.
    SlowConsumer(&'static str),
    /// The client sent a close frame (its code, if any).
    ClientClosed(Option<u16>),
    /// A health check or publish was answered.
    HttpDone,
    HandshakeTimeout,
    IdleTimeout,
    /// Our last bytes were sent but the peer did not close in time.
    LingerTimeout,
    ShuttingDown,
    /// EOF or a socket error before the connection ended in order.
    ConnectionLost(io::ErrorKind),
    /// The hub held more than `--max-buffered-bytes` and this connection
    /// held the most: closed with 1013.
    OverBudget,
    /// Refused at `accept`: over `--max-connections-per-ip` or
    /// `--max-pending`, or out of file descriptors; closed at once.
    Refused(&'static str),
    /// TLS failed: a handshake error (bad or missing client certificate, no
    /// shared protocol), plaintext on the TLS port, a corrupt record; the
    /// label says which.
    TlsFailed(&'static str),
}

/// The counter a reason lands in: a small, fixed set of labels (the metrics
/// issue exposes them as `reason="..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Exit {
    Rejected,
    HttpDone,
    ClientClosed,
    ProtocolError,
    InvalidUtf8,
    Policy,
    MessageTooBig,
    SlowConsumer,
    HandshakeTimeout,
    IdleTimeout,
    LingerTimeout,
    ShuttingDown,
    ConnectionLost,
    OverBudget,
    Refused,
    TlsError,
}

impl Exit {
    pub const ALL: [Exit; 16] = [
        Exit::Rejected,
        Exit::HttpDone,
        Exit::ClientClosed,
        Exit::ProtocolError,
        Exit::InvalidUtf8,
        Exit::Policy,
        Exit::MessageTooBig,
        Exit::SlowConsumer,
        Exit::HandshakeTimeout,
        Exit::IdleTimeout,
        Exit::LingerTimeout,
        Exit::ShuttingDown,
        Exit::ConnectionLost,
        Exit::OverBudget,
        Exit::Refused,
        Exit::TlsError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Exit::Rejected => "rejected",
            Exit::HttpDone => "http_done",
            Exit::ClientClosed => "client_close",
            Exit::ProtocolError => "protocol_error",
            Exit::InvalidUtf8 => "invalid_utf8",
            Exit::Policy => "policy",
            Exit::MessageTooBig => "message_too_big",
            Exit::SlowConsumer => "slow_consumer",
            Exit::HandshakeTimeout => "handshake_timeout",
            Exit::IdleTimeout => "idle_timeout",
            Exit::LingerTimeout => "close_timeout",
            Exit::ShuttingDown => "shutdown",
            Exit::ConnectionLost => "connection_lost",
            Exit::OverBudget => "memory_budget",
            Exit::Refused => "refused",
            Exit::TlsError => "tls_error",
        }
    }
}

impl Reason {
    /// A connection whose read or write failed: a TLS failure (its label),
    /// or the connection lost.
    pub fn failed(error: &io::Error) -> Reason {
        match crate::transport::TlsFailure::of(error) {
            Some(failure) => Reason::TlsFailed(failure.0),
            None => Reason::ConnectionLost(error.kind()),
        }
    }

    /// Problems a peer can cause are `info` (they are about the peer, not
    /// the hub); slow consumers are `warn` (they lose messages); ordinary
    /// endings are `debug`.
    pub fn level(&self) -> log::Level {
        match self {
            Reason::SlowConsumer(_) | Reason::OverBudget => log::Level::Warn,
            Reason::Rejected(_)
            | Reason::Protocol(_)
            | Reason::HandshakeTimeout
            | Reason::IdleTimeout
            | Reason::Refused(_)
            | Reason::TlsFailed(_) => log::Level::Info,
            Reason::ClientClosed(_)
            | Reason::HttpDone
            | Reason::LingerTimeout
            | Reason::ShuttingDown
            | Reason::ConnectionLost(_) => log::Level::Debug,
        }
    }

    /// The close code this ending carries: ours, or the client's.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Reason::Protocol(e) => Some(u16::from(e.code)),
            Reason::SlowConsumer(_) | Reason::OverBudget => Some(1013),
            Reason::ShuttingDown => Some(1001),
            Reason::ClientClosed(code) => *code,
            _ => None,
        }
    }

    /// The HTTP status a refused request got.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Reason::Rejected(r) => Some(r.status),
            _ => None,
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            Reason::Rejected(_) => Exit::Rejected,
            Reason::HttpDone => Exit::HttpDone,
            Reason::ClientClosed(_) => Exit::ClientClosed,
            Reason::Protocol(e) => match e.code {
                CloseCode::Invalid => Exit::InvalidUtf8,
                CloseCode::Policy => Exit::Policy,
                CloseCode::Size => Exit::MessageTooBig,
                _ => Exit::ProtocolError,
            },
            Reason::SlowConsumer(_) => Exit::SlowConsumer,
            Reason::HandshakeTimeout => Exit::HandshakeTimeout,
            Reason::IdleTimeout => Exit::IdleTimeout,
            Reason::LingerTimeout => Exit::LingerTimeout,
            Reason::ShuttingDown => Exit::ShuttingDown,
            Reason::ConnectionLost(_) => Exit::ConnectionLost,
            Reason::OverBudget => Exit::OverBudget,
            Reason::Refused(_) => Exit::Refused,
            Reason::TlsFailed(_) => Exit::TlsError,
        }
    }
}

/// The log text (after the peer address).
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rejected(r) => write!(f, "rejected with HTTP {}: {}", r.status, r.reason),
            Reason::Protocol(e) => write!(f, "closing with {}: {}", u16::from(e.code), e.reason),
            Reason::SlowConsumer(why) => write!(f, "dropping slow consumer with 1013: {why}"),
            Reason::ClientClosed(Some(code)) => write!(f, "client closed ({code})"),
            Reason::ClientClosed(None) => f.write_str("client closed (no code)"),
            Reason::HttpDone => f.write_str("HTTP request answered"),
            Reason::HandshakeTimeout => f.write_str("dropped: no complete request within --handshake-timeout"),
            Reason::IdleTimeout => f.write_str("dropped: silent for --idle-timeout"),
            Reason::LingerTimeout => f.write_str("dropped: close not acknowledged in time"),
            Reason::ShuttingDown => f.write_str("closing for shutdown"),
            Reason::ConnectionLost(io::ErrorKind::UnexpectedEof) => f.write_str("peer went away"),
            Reason::ConnectionLost(kind) => write!(f, "connection lost ({kind})"),
            Reason::OverBudget => {
                f.write_str("dropping with 1013: the hub is over --max-buffered-bytes and this client holds the most")
            }
            Reason::Refused(why) => write!(f, "refused: {why}"),
            Reason::TlsFailed(why) => write!(f, "TLS failed: {why}"),
        }
    }
}

/// Exit log lines per reason per second; the rest are counted and the
/// count is reported on the next line of that reason. A peer can trigger
/// these lines, so it must not be able to flood the log (or stall the loop
/// on it).
const LINES_PER_SECOND: u32 = 20;

/// The exit lines' budgets, one per [`Exit`] reason.
#[derive(Debug)]
pub struct LogLimiter([LineLimiter; Exit::ALL.len()]);

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter([LineLimiter::new(1000, LINES_PER_SECOND); Exit::ALL.len()])
    }
}

impl LogLimiter {
    /// See [`LineLimiter::admit`].
    pub fn admit(&mut self, exit: Exit, now_ms: u64) -> Option<u64> {
        self.0[exit as usize].admit(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_limited_per_reason_per_second() {
        let mut limiter = LogLimiter::default();
        let logged = (0..100).filter(|_| limiter.admit(Exit::Rejected, 5_000).is_some()).count();
        assert_eq!(logged, LINES_PER_SECOND as usize);
        assert_eq!(limiter.admit(Exit::IdleTimeout, 5_000), Some(0), "other reasons have their own budget");
        assert_eq!(limiter.admit(Exit::Rejected, 5_999), None);
        assert_eq!(limiter.admit(Exit::Rejected, 6_000), Some(81), "the next window reports what was suppressed");
    }
}
