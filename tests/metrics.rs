//! `GET /metrics`: a known mix of requests, then every counter must equal what
//! was sent, and the page must parse: with the strict parser below, and with
//! the `prometheus_client` parser from PyPI when it is installed (`.ci/run`
//! installs it and sets `RINGLB_REQUIRE_PROM_PARSER=1`, so CI cannot skip it).

mod common;

use common::client::{get, Client};
use common::origin::{dead_addr, Origin};
use common::Ringlb;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Samples by name and sorted labels.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// A strict reading of the text exposition format 0.0.4: HELP and TYPE once
/// per family and before its samples, samples of declared families only,
/// well-formed names, labels and values.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(name_ok(name), "bad name in {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    assert!(name_ok(k), "label name {k:?}");
                    // The value runs to the first unescaped quote.
                    let mut end = 0;
                    let b = v.as_bytes();
                    while b[end] != b'"' {
                        end += if b[end] == b'\\' { 2 } else { 1 };
                    }
                    labels.push((k.to_string(), v[..end].to_string()));
                    rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
                }
                labels.sort();
                (name, labels)
            }
        };
        assert!(name_ok(name), "{line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "series twice: {line}"
        );
    }
    samples
}

/// The value of one series (labels in any order); panics if it is missing.
fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *s.get(&(name.to_string(), l))
        .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
}

/// The prometheus_client parser, if Python has it. None: not installed.
fn python_parse(text: &str) -> Option<Result<usize, String>> {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        n = sum(len(f.samples) for f in parse(sys.stdin.read()))\n\
        print(n)\n";
    let probe = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().ok()?;
    Some(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn send(c: &mut Client, path: &str) -> u16 {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    c.read_response(false).status
}

#[test]
fn metrics_count_exactly_what_was_sent_and_parse() {
    let a1 = Origin::start();
    let a2 = Origin::start();
    let b = Origin::start();
    let dead = dead_addr();
    let servers = |v: &[SocketAddr]| common::server_list(v);
    let lb = Ringlb::start(&format!(
        "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"a\"\n\
         [[listener.route]]\nname = \"bee\"\npath_prefix = \"/b\"\nupstream = \"b\"\n\
         [[listener.route]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\
         [[listener.route]]\npath_prefix = \"/direct\"\nstatus = 202\n\n\
         [[upstream]]\nname = \"a\"\nservers = [{}]\n\
         [[upstream]]\nname = \"b\"\nservers = [{}]\n\
         [[upstream]]\nname = \"dead\"\nservers = [{}]\n",
        servers(&[a1.addr, a2.addr]),
        servers(&[b.addr]),
        servers(&[dead]),
    ));
    let listener = lb.addr().to_string();
    let (n_a, n_b, n_direct, n_bad) = (40, 15, 7, 5);
    let mut c = Client::connect(lb.addr());
    for _ in 0..n_a {
        assert_eq!(send(&mut c, "/"), 200);
    }
    for _ in 0..n_b {
        assert_eq!(send(&mut c, "/bytes/10"), 200);
    }
    for _ in 0..n_direct {
        assert_eq!(send(&mut c, "/direct"), 202);
    }
    // The dead server: refused (502), then held back (fast 503s).
    assert_eq!(send(&mut c, "/dead"), 502);
    let mut held = 0;
    for _ in 0..5 {
        let s = send(&mut c, "/dead");
        assert!(s == 503 || s == 502, "{s}");
        held += usize::from(s == 503);
    }
    let bad_gateways = 6 - held;
    for _ in 0..n_bad {
        let mut bad = Client::connect(lb.addr());
        bad.send_raw(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(bad.read_response(false).status, 400);
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(100));

    let page = get(lb.admin_addr().unwrap(), "/metrics");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = page.body_str();
    let s = parse(&text);
    let req = |route: &str, upstream: &str, code: &str| {
        value(
            &s,
            "ringlb_requests_total",
            &[
                ("listener", listener.as_str()),
                ("route", route),
                ("upstream", upstream),
                ("code", code),
            ],
        )
    };
    assert_eq!(req("default", "a", "2xx"), n_a as f64, "{text}");
    assert_eq!(req("bee", "b", "2xx"), n_b as f64);
    assert_eq!(
        req("2", "", "2xx"),
        n_direct as f64,
        "direct answers: unnamed route 2"
    );
    assert_eq!(req("1", "dead", "5xx"), 6.0);
    assert_eq!(req("-", "", "4xx"), n_bad as f64, "rejected before routing");
    assert_eq!(req("default", "a", "5xx"), 0.0);
    assert_eq!(
        value(
            &s,
            "ringlb_rejected_requests_total",
            &[("code", "400"), ("reason", "bad_request")]
        ),
        n_bad as f64
    );

    // Histograms: cumulative buckets, _count = the upstream's requests.
    for (upstream, n) in [("a", n_a), ("b", n_b), ("dead", 6)] {
        let count = value(
            &s,
            "ringlb_request_duration_seconds_count",
            &[("upstream", upstream)],
        );
        assert_eq!(count, n as f64, "{upstream}");
        let mut last = 0.0;
        for le in ["0.0005", "0.001", "0.005", "0.1", "1", "10", "+Inf"] {
            let v = value(
                &s,
                "ringlb_request_duration_seconds_bucket",
                &[("upstream", upstream), ("le", le)],
            );
            assert!(v >= last, "{upstream} le={le}: buckets not cumulative");
            last = v;
        }
        assert_eq!(last, count);
    }
    assert_eq!(
        value(
            &s,
            "ringlb_upstream_response_head_seconds_count",
            &[("upstream", "a")]
        ),
        n_a as f64
    );

    // Per server: a's two servers shared its requests; the dead one's refusals.
    let server = |name: &str, up: &str, addr: SocketAddr| {
        let addr = addr.to_string();
        value(&s, name, &[("upstream", up), ("server", addr.as_str())])
    };
    assert_eq!(
        server("ringlb_upstream_connections_reused_total", "a", a1.addr)
            + server("ringlb_upstream_connections_created_total", "a", a1.addr),
        a1.requests() as f64
    );
    assert_eq!(
        server("ringlb_upstream_connections_created_total", "b", b.addr),
        b.connections() as f64
    );
    assert_eq!(
        value(
            &s,
            "ringlb_upstream_connect_failures_total",
            &[
                ("upstream", "dead"),
                ("server", dead.to_string().as_str()),
                ("cause", "refused")
            ]
        ),
        bad_gateways as f64
    );
    assert!(server("ringlb_upstream_connections_idle", "b", b.addr) >= 1.0);
    assert_eq!(server("ringlb_server_up", "a", a1.addr), 1.0);

    // Connections: 1 + n_bad client connections, all closed by now.
    let accepted: f64 = (0..2)
        .map(|w: usize| {
            let w = w.to_string();
            value(
                &s,
                "ringlb_client_connections_accepted_total",
                &[("worker", w.as_str())],
            )
        })
        .sum();
    let open: f64 = (0..2)
        .map(|w: usize| {
            let w = w.to_string();
            value(
                &s,
                "ringlb_client_connections_open",
                &[("worker", w.as_str())],
            )
        })
        .sum();
    assert_eq!(accepted, (1 + n_bad) as f64);
    assert_eq!(open, 0.0);
    assert!(
        value(
            &s,
            "ringlb_client_bytes_sent_total",
            &[("listener", listener.as_str())]
        ) > 0.0
    );
    let build = s
        .keys()
        .find(|(n, _)| n == "ringlb_build_info")
        .expect("build info");
    assert!(
        build
            .1
            .iter()
            .any(|(k, v)| k == "io" && (v == "io_uring" || v == "epoll")),
        "{build:?}"
    );

    match python_parse(&text) {
        Some(Ok(n)) => assert!(n > 100, "prometheus_client read {n} samples"),
        Some(Err(e)) => panic!("prometheus_client rejects the page: {e}"),
        None => {
            assert!(
                std::env::var("RINGLB_REQUIRE_PROM_PARSER").is_err(),
                "prometheus_client is required here but not installed"
            );
            eprintln!("prometheus_client not installed: checked with the strict parser only");
        }
    }
}
