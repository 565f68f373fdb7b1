//! Micro-benchmarks of the request path's pure parts: request-head parse and
//! validate, head rewrite, chunked decode, balancer pick, deadline wheel, and
//! an access log line (capture, format, and the writer's share of a write).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringlb::http::chunked::ChunkedDecoder;
use ringlb::http::request::{self, Limits, Underscores};
use ringlb::http::{response, rewrite};
use ringlb::upstream::balance::testing::Table;
use ringlb::upstream::balance::{Algorithm, Balancer};

const REQUEST: &[u8] = b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: wrk/4.1\r\n\
Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nX-Forwarded-For: 203.0.113.9\r\n\
Cookie: session=0123456789abcdef; theme=dark\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 12:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n";
const LIMITS: Limits = Limits {
    max_head_bytes: 32768,
    max_request_line_bytes: 8192,
    underscores: Underscores::Drop,
};

fn parse_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("parse_validate", |b| {
        b.iter(|| {
            let mut h = ringlb::http::header_slots();
            let head = request::parse(black_box(REQUEST), &mut h, &LIMITS)
                .unwrap()
                .unwrap();
            black_box(head.framing);
        })
    });
    let mut out = Vec::with_capacity(4096);
    g.bench_function("parse_validate_rewrite", |b| {
        b.iter(|| {
            let mut h = ringlb::http::header_slots();
            let head = request::parse(black_box(REQUEST), &mut h, &LIMITS)
                .unwrap()
                .unwrap();
            rewrite::write_request(&head, b"10.0.0.1", b"lb:80", None, &mut out);
            black_box(out.len());
        })
    });
    g.finish();
}

fn parse_response(c: &mut Criterion) {
    let mut out = Vec::with_capacity(4096);
    c.bench_function("response/parse_validate_rewrite", |b| {
        b.iter(|| {
            let mut h = ringlb::http::header_slots();
            let head = response::parse(black_box(RESPONSE), &mut h, false, 65536)
                .unwrap()
                .unwrap();
            rewrite::write_response(
                &head,
                rewrite::BodyOut::Length(13),
                rewrite::ConnOut::Persistent,
                &mut out,
            );
            black_box(out.len());
        })
    });
}

fn chunked(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend(std::iter::repeat_n(b'x', 0x1000));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("scan_64KiB_in_4KiB_chunks", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::new();
            black_box(d.scan(black_box(&body)).unwrap())
        })
    });
    g.finish();
}

fn balance(c: &mut Criterion) {
    // 64 servers, all up, varied weights and load.
    let mut t = Table::new(64);
    t.weights = (0..64).map(|i| 100 + i % 3 * 100).collect();
    t.inflight = (0..64).map(|i| i % 7).collect();
    t.costs = (0..64).map(|i| 1e6 + f64::from(i) * 1e4).collect();
    let mut g = c.benchmark_group("balance_pick_64_servers");
    for (name, algo) in [
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("least_inflight", Algorithm::LeastInflight),
        ("p2c", Algorithm::PowerOfTwo),
        ("peak_ewma", Algorithm::PeakEwma),
        ("maglev", Algorithm::Maglev),
    ] {
        let mut b = Balancer::new(algo, 64, 42);
        let mut key = 0u64;
        g.bench_function(name, |bench| {
            bench.iter(|| {
                key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                black_box(b.pick(&t, black_box(key)))
            })
        });
    }
    // Least in-flight stops at the first idle server; with none idle it scans all.
    let mut busy = Table::new(64);
    busy.weights = t.weights.clone();
    busy.inflight = (0..64).map(|i| 1 + i % 7).collect();
    let mut b = Balancer::new(Algorithm::LeastInflight, 64, 42);
    g.bench_function("least_inflight_none_idle", |bench| {
        bench.iter(|| black_box(b.pick(&busy, 0)))
    });
    g.finish();
}

fn deadlines(c: &mut Criterion) {
    use ringlb::deadline::Wheel;
    let mut g = c.benchmark_group("deadline");
    // A connection re-arming its deadline for every operation: after the first
    // link, each arm to a later tick is a store.
    g.bench_function("rearm_later", |b| {
        let mut w = Wheel::new();
        let id = w.alloc();
        let mut now = 1_000u64;
        b.iter(|| {
            now += 1;
            w.arm(black_box(id), now + 6_000, now);
            w.disarm(id);
        });
    });
    // One full turn of the wheel (1024 ticks, ~10 s) with 10,000 connections
    // armed further out: every entry is visited and relinked once.
    g.bench_function("wheel_turn_10k_armed", |b| {
        b.iter_batched(
            || {
                let mut w = Wheel::new();
                for i in 0..10_000u64 {
                    let id = w.alloc();
                    w.arm(id, 1_000 + 3_000 + i % 997, 1_000);
                }
                w
            },
            |mut w| {
                for now in 1_001..=2_024u64 {
                    w.advance(now);
                }
                w
            },
            criterion::BatchSize::LargeInput,
        );
    });
    g.finish();
}

/// One access log line as a request pays for it: the head's fields copied,
/// the clock read, the line formatted into the worker's
/// buffer. `write_64k_to_file` is the writer thread's one write(2) per full
/// buffer, shared by the lines in it.
fn access_log(c: &mut Criterion) {
    use ringlb::access_log::format::{write_line, Clock, Outcome};
    use ringlb::access_log::{Capture, Format};
    use std::io::Write;
    let mut g = c.benchmark_group("access_log");
    // The server address comes preformatted (the metrics labels).
    let server = "127.0.0.1:18081";
    let mut out = Vec::with_capacity(64 * 1024);
    for (name, form) in [
        ("json_line", Format::Json),
        ("combined_line", Format::Combined),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut c = Capture::new(b"GET", b"/api/v1/items?id=42", b"", b"wrk/4.1", 1);
                c.set_request_id(b"5f0c3e8a9b1d2c4e6f708192a3b4c5d6");
                let o = Outcome {
                    client: "127.0.0.1",
                    status: 200,
                    bytes_sent: 137,
                    request_bytes: 210,
                    duration_us: 812,
                    upstream: Some("origin"),
                    server: Some(server),
                    upstream_us: Some(640),
                    retries: 0,
                    reason: None,
                };
                out.clear();
                write_line(&mut out, form, &Clock::now(), black_box(&c), &o);
                black_box(out.len())
            })
        });
    }
    let path = std::env::temp_dir().join(format!("ringlb-bench-{}.log", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let block = vec![b'x'; 64 * 1024];
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("write_64k_to_file", |b| {
        b.iter(|| {
            file.write_all(&block).unwrap();
            // Keep the file (and the page cache it fills) small.
            if file.metadata().map_or(0, |m| m.len()) > 256 << 20 {
                file.set_len(0).unwrap();
            }
        })
    });
    let _ = std::fs::remove_file(&path);
    g.finish();
}

criterion_group!(
    benches,
    parse_request,
    parse_response,
    chunked,
    balance,
    deadlines,
    access_log
);
criterion_main!(benches);
