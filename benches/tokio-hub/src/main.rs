//! The hub written the usual tokio way, for side-by-side benchmarks with
//! wshub: a task per connection, a bounded queue of 256 per client with
//! drop-on-full, a writer that sends everything queued before one flush,
//! TCP_NODELAY. Same protocol subset: `/ws`, every message to every client
//! including the sender, opcode preserved.
//!
//!   tokio-hub [--listen ADDR] [--runtime current|multi] [--buffers BYTES]
//!             [--tls-cert PEM --tls-key PEM]
//!
//! `--buffers` sets tungstenite's read and write buffer sizes (default:
//! tungstenite's own, 128 KiB each). `--tls-*`: TLS through tokio-rustls,
//! with the same crypto provider (ring) and defaults as wshub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Clients = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;

const QUEUE: usize = 256;

fn main() {
    let mut listen = "127.0.0.1:8081".to_string();
    let mut multi = false;
    let mut buffers: Option<usize> = None;
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value(),
            "--runtime" => multi = value() == "multi",
            "--buffers" => buffers = Some(value().parse().expect("--buffers BYTES")),
            "--tls-cert" => cert = Some(value()),
            "--tls-key" => key = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    let mut config = WebSocketConfig::default();
    if let Some(size) = buffers {
        config = config.read_buffer_size(size).write_buffer_size(size);
    }
    let runtime = if multi {
        tokio::runtime::Builder::new_multi_thread().enable_io().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_io().build()
    }
    .expect("runtime");
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(&cert, &key)),
        _ => None,
    };
    runtime.block_on(serve(listen, config, tls));
}

/// The same TLS settings as wshub's: ring, safe defaults, ALPN http/1.1.
fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("cert").collect::<Result<_, _>>().expect("cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve(listen: String, config: WebSocketConfig, tls: Option<tokio_rustls::TlsAcceptor>) {
    let listener = TcpListener::bind(&listen).await.expect("bind");
    eprintln!("tokio-hub listening on ws://{}/ws", listener.local_addr().expect("addr"));
    let clients: Clients = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let clients = Arc::clone(&clients);
        match tls.clone() {
            None => {
                tokio::spawn(handle(stream, id, clients, config));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        handle(stream, id, clients, config).await;
                    }
                });
            }
        }
    }
}

// The callback's error type is tungstenite's `ErrorResponse`, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn handle<S>(stream: S, id: u64, clients: Clients, config: WebSocketConfig)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let only_ws = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == "/ws" {
            Ok(resp)
        } else {
            let mut not_found = ErrorResponse::new(None);
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, only_ws, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    clients.lock().unwrap().insert(id, tx);

    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = rx.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    while let Some(Ok(message)) = source.next().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                let mut slow = Vec::new();
                {
                    let map = clients.lock().unwrap();
                    for (&client, tx) in map.iter() {
                        if tx.try_send(message.clone()).is_err() {
                            slow.push(client);
                        }
                    }
                }
                if !slow.is_empty() {
                    // Dropping a client's sender ends its writer, which closes it.
                    let mut map = clients.lock().unwrap();
                    for client in slow {
                        map.remove(&client);
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    clients.lock().unwrap().remove(&id);
    let _ = writer.await;
}
