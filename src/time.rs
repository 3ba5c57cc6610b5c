//! The loop's clock: whole milliseconds since the hub started, on the
//! monotonic clock. The driver reads the clock once per turn and hands the
//! value down; nothing below it reads a clock of its own, so tests set the
//! time they want.

use std::time::Duration;

/// Milliseconds since the server started.
pub type Millis = u64;

/// "No time": a deadline that is not set (a sentinel, so an idle
/// connection does not pay for an `Option`).
pub const NEVER: Millis = Millis::MAX;

/// A duration from the settings, in the loop's unit (saturating).
pub fn millis(d: Duration) -> Millis {
    d.as_millis().try_into().unwrap_or(NEVER)
}
