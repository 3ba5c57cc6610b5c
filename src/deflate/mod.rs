//! permessage-deflate (RFC 7692) with no compression state per connection:
//! the negotiation (`offer`), and the hub's one compressor and one inflater
//! (`codec`, the `deflate` feature). The hub agrees to no context takeover
//! in both directions, so a broadcast is compressed at most once and the
//! same compressed frame goes to every client that negotiated it, and any
//! client's message inflates without history. Without the feature the
//! negotiation never runs and the codec is a stub that is never called.

mod offer;

pub use offer::{Negotiated, negotiate};

#[cfg(feature = "deflate")]
mod codec;
#[cfg(feature = "deflate")]
pub use codec::{Compressor, Inflater};

#[cfg(not(feature = "deflate"))]
mod off;
#[cfg(not(feature = "deflate"))]
pub use off::{Compressor, Inflater};

/// Why a compressed message could not be taken.
#[cfg_attr(not(feature = "deflate"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than `--max-message-size` (close 1009).
    TooBig,
    /// It is not valid deflate data (close 1007, as for any payload that
    /// is not what its frame says).
    Invalid,
}
