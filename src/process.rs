//! The process figures Prometheus expects of every exporter
//! (`process_*`), read from `/proc/self` when a scrape asks. The one piece
//! of I/O behind `/metrics`: the driver hands it to the hub as a probe.

use std::fs;

/// A sample of the process's resource use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessMetrics {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// CPU time in hundredths of a second (the kernel's ticks are that
    /// fine; whole numbers keep float formatting out of a small binary).
    pub cpu_centiseconds: u64,
    /// Not read here: the hub counts its own (see [`count_open_fds`]).
    pub open_fds: u64,
    pub max_fds: u64,
    /// Start time since the epoch, in hundredths of a second.
    pub start_time_centiseconds: u64,
}

/// Linux reports CPU times in `/proc` in USER_HZ ticks, which the kernel's
/// user-space ABI fixes at 100 per second on every architecture we build
/// for: a tick is a hundredth of a second.
const USER_HZ: u64 = 100;

/// Descriptors open now, by listing `/proc/self/fd`: O(descriptors), so
/// the driver does it once at startup and the hub counts from there.
pub fn count_open_fds() -> u64 {
    // The listing holds the descriptor it is read through.
    fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(1) as u64).unwrap_or(0)
}

/// Reads `/proc/self/{stat,status,limits}` and `/proc/stat`; `None` where
/// there is no procfs.
pub fn sample() -> Option<ProcessMetrics> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: field 3 (state) is index 0 here.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim_ascii().strip_suffix("kB")?.trim_ascii().parse::<u64>().ok())
    };
    let boot = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim_ascii().parse::<u64>().ok()))
        .unwrap_or(0);
    let max_fds = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0);
    Some(ProcessMetrics {
        resident_bytes: kib("VmRSS:")? * 1024,
        virtual_bytes: kib("VmSize:")? * 1024,
        cpu_centiseconds: (field(14)? + field(15)?) * 100 / USER_HZ,
        open_fds: 0,
        max_fds,
        start_time_centiseconds: boot * 100 + field(22)? * 100 / USER_HZ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let p = sample().expect("procfs");
        assert!(p.resident_bytes > 1024 * 1024, "{p:?}");
        assert!(p.max_fds >= 3, "{p:?}");
        // Other tests of this binary open and close files on other threads:
        // an attempt that another thread disturbed is tried again.
        let counts_one_more = (0..100).any(|_| {
            let before = count_open_fds();
            let file = fs::File::open("/proc/self/stat").unwrap();
            let with = count_open_fds();
            drop(file);
            with == before + 1
        });
        assert!(counts_one_more, "an open file is counted");
        let open = count_open_fds();
        assert!(open >= 3 && p.max_fds >= open, "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() * 100;
        let started = p.start_time_centiseconds;
        assert!(started > now - 360_000 && started <= now + 100, "{p:?}");
    }
}
