//! MQTT client helpers for tests: rumqttc event loops driven in the background, forwarding
//! incoming packets (and the final error) to a channel, and TLS client configurations with a
//! client certificate.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::{AsyncClient as V5Client, ConnectionError as V5Error, Event as V5Event};
use rumqttc::{AsyncClient, ConnectionError, Event, Packet, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

/// Drives a v3 event loop, forwarding incoming packets and the final error.
pub fn spawn_v3(
    opts: rumqttc::MqttOptions,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
) {
    let (client, mut el) = AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    (client, rx)
}

pub fn spawn_v5(
    opts: rumqttc::v5::MqttOptions,
) -> (V5Client, mpsc::UnboundedReceiver<Result<V5Packet, V5Error>>) {
    let (client, mut el) = V5Client::new(opts, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(V5Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    (client, rx)
}

pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event within 10 s")
        .expect("event")
}

/// Skips pings and returns the next interesting v3 packet.
pub async fn next_v3(
    rx: &mut mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
) -> Result<Packet, ConnectionError> {
    loop {
        match next(rx).await {
            Ok(Packet::PingResp) => continue,
            other => return other,
        }
    }
}

pub async fn next_v5(
    rx: &mut mpsc::UnboundedReceiver<Result<V5Packet, V5Error>>,
) -> Result<V5Packet, V5Error> {
    loop {
        match next(rx).await {
            Ok(V5Packet::PingResp(_)) => continue,
            other => return other,
        }
    }
}

/// A TLS transport trusting `ca_pem` and presenting `cert_pem` (chain) with `key_pem`.
pub fn tls_with_cert(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Transport {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    Transport::Tls(TlsConfiguration::Rustls(Arc::new(cfg)))
}
