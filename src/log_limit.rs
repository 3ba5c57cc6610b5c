//! Log lines a peer (or a misbehaving Redis) can cause, rate-limited: a
//! flood of them must neither flood the log nor stall the loop on it. Each
//! kind of line gets a budget per window; the lines over it are counted,
//! and the next line let through says how many were held back.

use crate::time::Millis;

/// The budget of one kind of line.
#[derive(Debug, Clone, Copy)]
pub struct LineLimiter {
    window: Millis,
    per_window: u32,
    window_start: Option<Millis>,
    lines: u32,
    suppressed: u64,
}

impl LineLimiter {
    /// At most `per_window` lines per `window` milliseconds.
    pub const fn new(window: Millis, per_window: u32) -> LineLimiter {
        LineLimiter { window, per_window, window_start: None, lines: 0, suppressed: 0 }
    }

    /// `None`: do not log this one (it is counted). `Some(n)`: log it,
    /// saying that `n` lines like it were held back since the last one.
    pub fn admit(&mut self, now: Millis) -> Option<u64> {
        if self.window_start.is_none_or(|start| now >= start.saturating_add(self.window)) {
            self.window_start = Some(now);
            self.lines = 0;
        }
        if self.lines >= self.per_window {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Logs `text` at `level` if the budget allows, with the count of the
    /// lines held back since the last one.
    pub fn log(&mut self, level: log::Level, now: Millis, text: std::fmt::Arguments) {
        if !log::log_enabled!(level) {
            return;
        }
        match self.admit(now) {
            None => {}
            Some(0) => log::log!(level, "{text}"),
            Some(held) => log::log!(level, "{text} ({held} more like it were not logged)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_limited_per_window_and_the_rest_counted() {
        let mut limiter = LineLimiter::new(1000, 20);
        let logged = (0..100).filter(|_| limiter.admit(5_000).is_some()).count();
        assert_eq!(logged, 20);
        assert_eq!(limiter.admit(5_999), None);
        assert_eq!(limiter.admit(6_000), Some(81), "the next window reports what was held back");
        let mut once = LineLimiter::new(10_000, 1);
        assert_eq!(once.admit(0), Some(0), "the first line at time 0 is logged");
        assert_eq!(once.admit(9_999), None);
        assert_eq!(once.admit(10_000), Some(1));
    }
}
