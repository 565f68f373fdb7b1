//! Which rustls crypto provider TLS termination should use (issue 14): full
//! and resumed TLS 1.3 handshakes with an ECDSA P-256 and an RSA 2048
//! certificate, and bulk records (encrypt on one side, decrypt on the
//! other), with ring and with aws-lc-rs. Client and server talk through
//! memory, no sockets: this measures the cryptography and rustls alone,
//! both sides on one core (a proxy pays the server's share).
//!
//! The RSA key comes from `openssl` (ring cannot make RSA keys); without it
//! the RSA cases are skipped, and say so.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::sync::Arc;

type Cert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn providers() -> [(&'static str, Arc<CryptoProvider>); 2] {
    [
        ("ring", Arc::new(rustls::crypto::ring::default_provider())),
        (
            "aws-lc-rs",
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        ),
    ]
}

fn ecdsa_p256() -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    (
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    )
}

fn rsa_2048() -> Option<Cert> {
    // The key from openssl (ring cannot make RSA keys), the certificate
    // from rcgen (an end-entity one, as the ECDSA one).
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .ok()?;
    if !made.status.success() {
        return None;
    }
    let pem = String::from_utf8(made.stdout).ok()?;
    let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).ok()?;
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).ok()?;
    let cert = params.self_signed(&key).ok()?;
    Some((
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).ok()?,
    ))
}

/// A server and a client config; the client keeps tickets if `resume`.
fn configs(
    p: &Arc<CryptoProvider>,
    (certs, key): &Cert,
    resume: bool,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let server = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(certs[0].clone()).expect("root");
    let mut client = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        client.resumption = rustls::client::Resumption::disabled();
    }
    (Arc::new(server), Arc::new(client))
}

/// Runs a handshake to its end; returns both sides.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (ServerConnection, ClientConnection) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(client.clone(), name).expect("client");
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut wire = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        pump(&mut c, &mut s, &mut wire);
        pump(&mut s, &mut c, &mut wire);
    }
    (s, c)
}

/// Moves what `from` has to send into `to`, and lets `to` process it.
fn pump<A, B, DA, DB>(from: &mut A, to: &mut B, wire: &mut Vec<u8>)
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<DA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<DB>>,
    DB: rustls::SideData,
{
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).expect("write tls");
    }
    let mut rd = &wire[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read tls");
    }
    to.process_new_packets().expect("process");
}

fn handshakes(c: &mut Criterion) {
    let mut certs = vec![("ecdsa-p256", Some(ecdsa_p256()))];
    let rsa = rsa_2048();
    if rsa.is_none() {
        eprintln!("no openssl: the RSA 2048 cases are skipped");
    }
    certs.push(("rsa-2048", rsa));
    let mut g = c.benchmark_group("tls13_handshake");
    g.throughput(Throughput::Elements(1));
    for (cert_name, cert) in &certs {
        let Some(cert) = cert else { continue };
        for (provider, p) in providers() {
            let (server, client) = configs(&p, cert, false);
            let (s, _) = handshake(&server, &client);
            let (again, _) = handshake(&server, &client);
            assert_eq!(
                (s.handshake_kind(), again.handshake_kind()),
                (
                    Some(rustls::HandshakeKind::Full),
                    Some(rustls::HandshakeKind::Full)
                )
            );
            g.bench_function(format!("full/{cert_name}/{provider}"), |b| {
                b.iter(|| black_box(handshake(&server, &client)))
            });
            // Resumed: the client keeps its tickets between handshakes.
            let (server, client) = configs(&p, cert, true);
            let (s, _) = handshake(&server, &client);
            assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Full));
            let (s, _) = handshake(&server, &client);
            assert_eq!(
                s.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "{provider}: the second handshake did not resume"
            );
            g.bench_function(format!("resumed/{cert_name}/{provider}"), |b| {
                b.iter(|| black_box(handshake(&server, &client)))
            });
        }
    }
    g.finish();
}

/// 64 KiB from server to client in 16 KiB records: encrypt, decrypt.
fn bulk(c: &mut Criterion) {
    const CHUNK: usize = 16 * 1024;
    const TOTAL: usize = 64 * 1024;
    let cert = ecdsa_p256();
    let mut g = c.benchmark_group("tls13_bulk");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    for (provider, p) in providers() {
        let (server, client) = configs(&p, &cert, false);
        let (mut s, mut cl) = handshake(&server, &client);
        // All 64 KiB is written before any is sent.
        s.set_buffer_limit(None);
        cl.set_buffer_limit(None);
        let data = vec![0x5au8; CHUNK];
        let mut wire = Vec::with_capacity(TOTAL + 1024);
        let mut plain = vec![0u8; TOTAL];
        let suite = s
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        g.bench_function(
            format!("64KiB/{provider}/{}", suite.unwrap_or_default()),
            |b| {
                b.iter(|| {
                    for _ in 0..TOTAL / CHUNK {
                        s.writer().write_all(&data).expect("write");
                    }
                    wire.clear();
                    while s.wants_write() {
                        s.write_tls(&mut wire).expect("write tls");
                    }
                    let mut rd = &wire[..];
                    let mut got = 0;
                    while !rd.is_empty() {
                        cl.read_tls(&mut rd).expect("read tls");
                        cl.process_new_packets().expect("process");
                        loop {
                            match cl.reader().read(&mut plain[got..]) {
                                Ok(0) => break,
                                Ok(n) => got += n,
                                Err(_) => break,
                            }
                        }
                    }
                    assert_eq!(got, TOTAL);
                    black_box(&plain);
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, handshakes, bulk);
criterion_main!(benches);
