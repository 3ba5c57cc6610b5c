//! One TLS connection after a real handshake: any sequence of records the
//! client seals (any content type and content, so half handshake messages,
//! alerts, empty and tiny records), raw bytes (fragments, garbage), reads,
//! writes, closes and a socket that fills up, in any order. The session
//! never panics, keeps its failure once it has one, and holds bounded
//! memory.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wshub::testing::TlsSession;
use wshub::testing::test_peer::{self, MemorySocket};

fn config() -> &'static std::sync::Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<std::sync::Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG.get_or_init(test_peer::test_server_config)
}

fuzz_target!(|data: &[u8]| {
    let mut server = TlsSession::new(config()).expect("session");
    let mut socket = MemorySocket::default();
    let Ok(mut peer) = test_peer::handshake_in_memory(&mut server, &mut socket) else {
        panic!("the handshake between rustls' client and the session failed");
    };
    let mut ops = data;
    let mut failed = false;
    let mut plain = vec![0u8; 64 * 1024];
    while let [op, arg, rest @ ..] = ops {
        let len = usize::from(*arg);
        let (taken, after) = rest.split_at(len.min(rest.len()));
        ops = after;
        match op % 8 {
            // A sealed record: content type from the first byte.
            0 => {
                let (kind, content) = taken.split_first().unwrap_or((&23, &[]));
                socket.inbound.extend(peer.seal(20 + kind % 5, content));
            }
            // Raw bytes on the wire.
            1 => socket.inbound.extend_from_slice(taken),
            // One read.
            2 => {
                if let Err(e) = server.read_tls(&mut socket) {
                    failed |= e.kind() == std::io::ErrorKind::InvalidData;
                }
            }
            // Plaintext out.
            3 => {
                let _ = server.take_plaintext(&mut plain[..len.max(1)]);
            }
            // A write of `len` bytes.
            4 => {
                let _ = server.write_plaintext(&plain[..len], &mut socket);
            }
            5 => {
                let _ = server.close(&mut socket);
            }
            // The peer's window: `len` more bytes, or none.
            6 => socket.room = len,
            // Flush, and the peer reads everything.
            _ => {
                let _ = server.flush(&mut socket);
                socket.outbound.clear();
            }
        }
        if failed {
            assert!(server.read_tls(&mut socket).is_err(), "a failure sticks");
        }
        // Leftovers are bounded: a record or a handshake message being joined,
        // plaintext of one read, records of a few writes.
        assert!(server.buffered_bytes() < 1 << 20, "holds {} bytes", server.buffered_bytes());
    }
    // Whatever is left is processed to the end.
    socket.room = usize::MAX;
    while !socket.inbound.is_empty() && server.read_tls(&mut socket).is_ok() {}
    let _ = server.write_plaintext(b"last", &mut socket);
    let _ = server.close(&mut socket);
});
