//! The binary's logger: one line per event on stderr that never blocks the
//! loop and never ends the process.
//!
//! `eprintln!` (and loggers built on it) blocks the loop thread when stderr
//! is a pipe nobody reads, and panics when the pipe is closed (with
//! `panic = "abort"`, that ends the hub). Here stderr gets a non-blocking
//! writer of its own: a pipe is reopened through `/proc/self/fd/2`, which
//! gives this process its own open file description, so `O_NONBLOCK` on it
//! does not change the pipe for anyone else sharing it; a socket (journald's
//! stream) is set non-blocking. Terminals and files are written as they are
//! (they do not stay full). A line that does not fit is dropped and counted;
//! the count is reported on the next line that fits. Write errors (a closed
//! pipe) are ignored.
//!
//! Under systemd (`JOURNAL_STREAM` set) text lines carry no timestamp:
//! journald adds its own. `--log-format json` writes one JSON object per
//! line instead: `ts`, `level`, `target`, `msg`, and the event's fields
//! (`peer`, `reason`, `code`, `status`, ...: the `log` key-values).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Longest line written; longer ones are cut (a pipe write of at most
/// `PIPE_BUF`, 4096 bytes, is atomic: all of it or nothing).
const MAX_LINE: usize = 4000;
/// Longest value of one field in a JSON line (a token's `sub`, a peer's
/// certificate subject): several fields must fit one line.
const MAX_FIELD: usize = 512;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because stderr was full, since start.
pub fn dropped_log_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where lines go: stderr, made non-blocking, and the unwritten rest of
/// the last line.
struct Sink {
    out: Out,
    /// A line the stream took part of: it is finished before any other line
    /// starts, so lines are never torn (a stream socket, journald's, may
    /// take part of a write; a pipe takes a line of at most `PIPE_BUF` whole
    /// or not at all).
    tail: Vec<u8>,
}

enum Out {
    /// A non-blocking file description (a pipe) or a file/terminal.
    File(File),
    /// A stream socket set non-blocking.
    Socket(UnixStream),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::File(f) => f.write(buf),
            Out::Socket(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn open() -> io::Result<Sink> {
        let stderr = io::stderr().as_fd().try_clone_to_owned()?;
        let file = File::from(stderr);
        let kind = file.metadata()?.file_type();
        let out = if kind.is_fifo() {
            // A description of our own: O_NONBLOCK here is ours alone.
            match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open("/proc/self/fd/2") {
                Ok(own) => Out::File(own),
                Err(_) => {
                    // No /proc: the shared description is made non-blocking
                    // (others writing to the pipe see it too), rather than
                    // let a full pipe block the loop.
                    set_nonblocking(&file)?;
                    Out::File(file)
                }
            }
        } else if kind.is_socket() {
            let socket = UnixStream::from(std::os::fd::OwnedFd::from(file));
            socket.set_nonblocking(true)?;
            Out::Socket(socket)
        } else {
            Out::File(file)
        };
        Ok(Sink { out, tail: Vec::new() })
    }

    fn write_line(&mut self, line: &[u8]) -> bool {
        write_whole_line(&mut self.out, &mut self.tail, line)
    }

    /// Finishes the last line, if the stream has room now.
    fn finish(&mut self) -> bool {
        finish_tail(&mut self.out, &mut self.tail)
    }
}

/// `O_NONBLOCK` on a file description through `fcntl`.
fn set_nonblocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own (for the duration of the call)
    // reads and sets its status flags; no memory is passed.
    #[allow(unsafe_code)]
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags != -1 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) != -1
    };
    if ok { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Writes `line` whole or not at all: first the unwritten rest of the last
/// line (if that cannot go, this line is dropped whole); a line the stream
/// takes part of keeps its rest in `tail`. False: dropped.
fn write_whole_line(out: &mut impl Write, tail: &mut Vec<u8>, line: &[u8]) -> bool {
    if !finish_tail(out, tail) {
        return false;
    }
    match out.write(line) {
        Ok(n) if n == line.len() => true,
        Ok(0) | Err(_) => false,
        Ok(n) => {
            tail.extend_from_slice(&line[n..]);
            true
        }
    }
}

fn finish_tail(out: &mut impl Write, tail: &mut Vec<u8>) -> bool {
    while !tail.is_empty() {
        match out.write(tail) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                tail.drain(..n);
            }
        }
    }
    true
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL [target] message`.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields.
    Json,
}

struct Logger {
    level: LevelFilter,
    format: LogFormat,
    timestamps: bool,
    /// The sink and a line buffer reused for every line.
    out: Mutex<(Option<Sink>, Vec<u8>)>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut guard = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (sink, line) = &mut *guard;
        let Some(sink) = sink.as_mut() else { return };
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0 {
            line.clear();
            let notice = format_args!("{dropped} log line(s) dropped: stderr was not being read");
            self.format(line, log::Level::Warn, "wshub::logger", notice, None);
            if sink.write_line(line) {
                DROPPED.fetch_sub(dropped, Ordering::Relaxed);
            } else {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        line.clear();
        self.format(line, record.level(), record.target(), *record.args(), Some(record.key_values()));
        if !sink.write_line(line) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Finishes a line the stream took part of (the loop calls this each
    /// second, so a last line does not wait for the next one).
    fn flush(&self) {
        let mut guard = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sink) = guard.0.as_mut() {
            sink.finish();
        }
    }
}

impl Logger {
    /// One whole line, newline included, at most about `MAX_LINE` bytes.
    fn format(
        &self,
        line: &mut Vec<u8>,
        level: log::Level,
        target: &str,
        message: std::fmt::Arguments,
        fields: Option<&dyn log::kv::Source>,
    ) {
        match self.format {
            LogFormat::Text => {
                if self.timestamps {
                    write_utc_timestamp(line, SystemTime::now());
                    line.push(b' ');
                }
                let _ = write!(line, "{level:<5} [{target}] ");
                // Text from peers (a certificate subject, a Redis error)
                // must not end the line or reach a terminal as controls.
                let _ = std::fmt::write(&mut Escaped(line), message);
                if line.len() > MAX_LINE {
                    truncate_utf8(line, MAX_LINE);
                    line.extend_from_slice(b" [cut]");
                }
            }
            LogFormat::Json => {
                line.extend_from_slice(b"{\"ts\":\"");
                write_utc_timestamp(line, SystemTime::now());
                let _ = write!(line, "\",\"level\":\"{level}\",\"target\":");
                json_string(line, target);
                line.extend_from_slice(b",\"msg\":");
                json_string(line, &capped(message.to_string(), MAX_LINE / 2));
                if let Some(fields) = fields {
                    let _ = fields.visit(&mut JsonFields(line));
                }
                line.push(b'}');
            }
        }
        line.push(b'\n');
    }
}

/// Appends text with control characters (C0, DEL, C1) escaped: `\n`,
/// `\r`, `\t`, and `\u{..}` for the rest. For the text format.
struct Escaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for c in s.chars() {
            match c {
                '\n' => self.0.extend_from_slice(b"\\n"),
                '\r' => self.0.extend_from_slice(b"\\r"),
                '\t' => self.0.extend_from_slice(b"\\t"),
                c if c.is_control() => {
                    let _ = write!(self.0, "\\u{{{:x}}}", c as u32);
                }
                c => {
                    let mut buf = [0; 4];
                    self.0.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        Ok(())
    }
}

/// Cuts `line` to at most `max` bytes without cutting a UTF-8 sequence.
fn truncate_utf8(line: &mut Vec<u8>, max: usize) {
    let mut cut = max.min(line.len());
    while cut > 0 && cut < line.len() && line[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    line.truncate(cut);
}

/// `text` cut to at most `max` bytes (on a character boundary), marked.
fn capped(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" [cut]");
    }
    text
}

/// Writes `s` as a JSON string (RFC 8259 §7 escapes, and DEL and C1
/// controls as `\u` escapes too, which JSON allows raw but terminals obey).
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Up to 64 bytes of text on the stack (more is cut): a peer address
/// formatted for a log field, without an allocation.
pub struct ShortText {
    buf: [u8; 64],
    len: usize,
}

impl ShortText {
    pub fn of(value: impl std::fmt::Display) -> ShortText {
        let mut text = ShortText { buf: [0; 64], len: 0 };
        let _ = std::fmt::write(&mut text, format_args!("{value}"));
        text
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl std::fmt::Write for ShortText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Whole characters only, so the text stays UTF-8.
        for c in s.chars() {
            let mut utf8 = [0; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            if self.len + bytes.len() > self.buf.len() {
                return Ok(());
            }
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

/// Appends an event's key-values as `,"key":value` members: numbers and
/// booleans as such, absent values (`None`) left out, the rest as strings.
struct JsonFields<'a>(&'a mut Vec<u8>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        let mut rendered = Vec::new();
        value.visit(JsonValue(&mut rendered))?;
        if !rendered.is_empty() {
            self.0.push(b',');
            json_string(self.0, key.as_str());
            self.0.push(b':');
            self.0.extend_from_slice(&rendered);
        }
        Ok(())
    }
}

struct JsonValue<'a>(&'a mut Vec<u8>);

impl<'v> log::kv::VisitValue<'v> for JsonValue<'_> {
    /// Fields are strings, numbers and booleans (the hub passes a peer
    /// address as text, see [`ShortText`]): a field captured with `%` or
    /// `?` would need `log`'s general formatting, whose float code costs
    /// the small binary 15 KiB, so it shows as `?`.
    fn visit_any(&mut self, value: log::kv::Value) -> Result<(), log::kv::Error> {
        json_string(self.0, value.to_borrowed_str().unwrap_or("?"));
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), log::kv::Error> {
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), log::kv::Error> {
        json_string(self.0, &capped(value.to_string(), MAX_FIELD));
        Ok(())
    }
}

/// Installs the logger for the `wshub` binary (an application embedding the
/// library keeps its own `log` backend). `journal`: text lines without
/// timestamps (journald adds its own).
pub fn init(level: LevelFilter, format: LogFormat, journal: bool) -> Result<(), log::SetLoggerError> {
    let sink = Sink::open().ok();
    let logger = Logger { level, format, timestamps: !journal, out: Mutex::new((sink, Vec::with_capacity(256))) };
    // The logger lives as long as the process (`log` requires it).
    log::set_logger(Box::leak(Box::new(logger)))?;
    log::set_max_level(level);
    Ok(())
}

/// `2026-11-25T23:40:01.123Z`, from the Unix time (no date crate for this).
fn write_utc_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days` algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso_8601() {
        let mut out = Vec::new();
        write_utc_timestamp(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");
        out.clear();
        // 2024-02-29T12:34:56.789Z: a leap day
        write_utc_timestamp(&mut out, UNIX_EPOCH + Duration::from_millis(1_709_210_096_789));
        assert_eq!(String::from_utf8(out).unwrap(), "2024-02-29T12:34:56.789Z");
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    fn logger(format: LogFormat) -> Logger {
        Logger { level: LevelFilter::Info, format, timestamps: false, out: Mutex::new((None, Vec::new())) }
    }

    /// A stream that takes `room` bytes per call, then none.
    struct Stingy {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_whole_or_dropped_whole_never_torn() {
        let mut out = Stingy { taken: Vec::new(), room: 10 };
        let mut tail = Vec::new();
        assert!(write_whole_line(&mut out, &mut tail, b"first line\n"), "taken in part: its rest is kept");
        assert!(!write_whole_line(&mut out, &mut tail, b"second\n"), "dropped whole while the first is unfinished");
        out.room = 100;
        assert!(write_whole_line(&mut out, &mut tail, b"third\n"));
        assert_eq!(out.taken, b"first line\nthird\n", "no torn line, none interleaved");
        out.room = 3;
        assert!(write_whole_line(&mut out, &mut tail, b"fourth\n"));
        assert!(!finish_tail(&mut out, &mut tail));
        out.room = 100;
        assert!(finish_tail(&mut out, &mut tail), "the loop's flush finishes it");
        assert_eq!(out.taken, b"first line\nthird\nfourth\n");
    }

    #[test]
    fn text_lines_escape_controls_and_cut_on_a_character_boundary() {
        let logger = logger(LogFormat::Text);
        let mut line = Vec::new();
        let forged = "CN=dev\nINFO  [wshub::hub] forged line\u{1b}[31m\u{9b}2J\u{7f}\r\tok";
        logger.format(&mut line, log::Level::Info, "wshub::tls", format_args!("{forged}"), None);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            "INFO  [wshub::tls] CN=dev\\nINFO  [wshub::hub] forged line\\u{1b}[31m\\u{9b}2J\\u{7f}\\r\\tok\n"
        );
        assert_eq!(text.matches('\n').count(), 1, "one line");
        let mut line = Vec::new();
        let long = "é".repeat(3000);
        logger.format(&mut line, log::Level::Info, "t", format_args!("{long}"), None);
        let text = String::from_utf8(line).expect("not cut inside a character");
        assert!(text.len() <= MAX_LINE + 10 && text.ends_with(" [cut]\n"), "{}", text.len());
    }

    #[test]
    fn json_lines_carry_the_event_fields() {
        let logger = Logger {
            level: LevelFilter::Info,
            format: LogFormat::Json,
            timestamps: true,
            out: Mutex::new((None, Vec::new())),
        };
        let peer = ShortText::of(std::net::SocketAddr::from(([192, 0, 2, 1], 5)));
        let fields: [(&str, log::kv::Value); 4] = [
            ("peer", peer.as_str().into()),
            ("code", 1008u16.into()),
            ("status", log::kv::Value::null()),
            ("reason", "policy".into()),
        ];
        let mut line = Vec::new();
        logger.format(
            &mut line,
            log::Level::Info,
            "wshub::hub",
            format_args!("a \"quoted\"\nline\u{1}"),
            Some(&fields),
        );
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with("}\n") && text.starts_with("{\"ts\":\""), "{text}");
        assert!(text.contains(r#""level":"INFO","target":"wshub::hub","msg":"a \"quoted\"\nline\u0001","peer":"192.0.2.1:5","code":1008,"reason":"policy"}"#), "{text}");
        assert!(!text.contains("status"), "absent fields are left out: {text}");
        // Every field is capped, so several fit one line; controls escaped.
        let long = "s".repeat(10_000);
        let fields: [(&str, log::kv::Value); 2] = [("sub", long.as_str().into()), ("subject", "a\u{9b}b".into())];
        let mut line = Vec::new();
        logger.format(&mut line, log::Level::Info, "wshub::hub", format_args!("x"), Some(&fields));
        let text = String::from_utf8(line).unwrap();
        assert!(text.len() < MAX_FIELD + 200, "{}", text.len());
        assert!(text.contains(r#""subject":"a\u009bb""#), "{text}");
    }
}
