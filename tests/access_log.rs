//! Access logs, request ids and the event log's level and JSON form, end to
//! end: what the files hold must be what the clients saw.

mod common;

use common::client::Client;
use common::origin::{header, Origin};
use common::{temp_path, Ringlb};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lines of `path` once it holds at least `n` (bounded wait).
fn lines(path: &Path, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    common::eventually(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(10),
        || {
            got = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            got.len() >= n
        },
    );
    got
}

fn config(origin: SocketAddr, json: &Path, combined: &Path, top: &str) -> String {
    format!(
        "workers = 2\n{top}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         access_log = {{ path = \"{}\", format = \"json\" }}\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         access_log = {{ path = \"{}\" }}\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n",
        json.display(),
        combined.display()
    )
}

#[test]
fn json_and_combined_lines_say_what_the_client_saw() {
    let origin = Origin::start();
    let (json, combined) = (temp_path("access.json"), temp_path("access.log"));
    let lb = Ringlb::start(&config(origin.addr, &json, &combined, ""));
    let mut seen = Vec::new();
    let mut c = Client::connect(lb.addrs[0]);
    for path in ["/", "/echo", "/status/404", "/bytes/5000", "/a%22b"] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: t/1\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        seen.push((path, r.status, r.head.len() + r.body.len()));
    }
    // Raw (no test token), so the request's size is known.
    let post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    c.send_raw(post);
    let r = c.read_response(false);
    seen.push(("/echo", r.status, r.head.len() + r.body.len()));
    let mut bad = Client::connect(lb.addrs[0]);
    bad.send_raw(b"GET /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(bad.read_response(false).status, 400);

    let got = lines(&json, seen.len() + 1);
    let all: Vec<Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // The rejected request came on its own connection, perhaps through the
    // other worker: its line may be anywhere. The others are in order.
    let rejected = all
        .iter()
        .find(|e| e["status"] == 400)
        .expect("the 400 is logged");
    let entries: Vec<&Value> = all.iter().filter(|e| e["status"] != 400).collect();
    let ids: Vec<String> = origin
        .heads()
        .iter()
        .map(|h| {
            header(h, "x-request-id")
                .expect("an id went upstream")
                .to_string()
        })
        .collect();
    for (i, (path, status, bytes)) in seen.iter().enumerate() {
        let e = &entries[i];
        assert_eq!(e["target"], *path, "{e}");
        assert_eq!(e["status"], *status, "{e}");
        assert_eq!(e["bytes_sent"], *bytes as u64, "{e}");
        assert_eq!(e["client"], "127.0.0.1");
        assert_eq!(e["protocol"], "HTTP/1.1");
        assert_eq!(e["upstream"], "app");
        assert_eq!(e["server"], origin.addr.to_string());
        assert_eq!(e["request_id"], ids[i].as_str(), "the id the origin saw");
        assert!(e["reason"].is_null());
        assert!(e["duration_ms"].as_f64().unwrap() >= e["upstream_ms"].as_f64().unwrap());
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    assert_eq!(entries[5]["method"], "POST");
    assert_eq!(entries[5]["request_bytes"], post.len() as u64);
    assert_eq!(
        (rejected["status"].as_u64(), rejected["target"].as_str()),
        (Some(400), Some("/smuggle"))
    );
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap()
            .contains("both Content-Length and Transfer-Encoding"),
        "{rejected}"
    );

    // The combined format, as Apache and nginx write it.
    let mut c = Client::connect(lb.addrs[1]);
    c.send(
        b"GET /x?y=1 HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: agent \"q\"\r\n\r\n",
    );
    let r = c.read_response(false);
    let got = lines(&combined, 1);
    let re_ok = |l: &str| -> Option<Vec<String>> {
        // HOST - - [DD/Mon/YYYY:HH:MM:SS +0000] "METHOD TARGET PROTO" STATUS BYTES "REF" "UA"
        let (host, rest) = l.split_once(" - - [")?;
        let (time, rest) = rest.split_once("] \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let mut it = rest.splitn(3, ' ');
        let (status, bytes, rest) = (it.next()?, it.next()?, it.next()?);
        let (referer, ua) = rest
            .strip_prefix('"')?
            .strip_suffix('"')?
            .split_once("\" \"")?;
        (time.len() == 26 && time.ends_with(" +0000") && status.len() == 3).then(|| {
            vec![host, request, status, bytes, referer, ua]
                .into_iter()
                .map(String::from)
                .collect()
        })
    };
    let f = re_ok(&got[0]).unwrap_or_else(|| panic!("not combined: {}", got[0]));
    assert_eq!(f[0], "127.0.0.1");
    assert_eq!(f[1], "GET /x?y=1 HTTP/1.1");
    assert_eq!(f[2], r.status.to_string());
    assert_eq!(f[3], (r.head.len() + r.body.len()).to_string());
    assert_eq!(f[4], "http://r/");
    assert_eq!(f[5], "agent \\x22q\\x22");
}

#[test]
fn sigusr1_after_a_move_reopens_without_losing_or_splitting_a_line() {
    let origin = Origin::start();
    let (json, combined) = (temp_path("rot.json"), temp_path("rot.log"));
    let lb = Ringlb::start(&config(origin.addr, &json, &combined, ""));
    let moved = PathBuf::from(format!("{}.1", json.display()));
    let mut c = Client::connect(lb.addrs[0]);
    let send = |c: &mut Client, n: usize| {
        for _ in 0..n {
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(c.read_response(false).status, 200);
        }
    };
    send(&mut c, 30);
    lines(&json, 30);
    std::fs::rename(&json, &moved).unwrap();
    send(&mut c, 10); // may land in the moved file, as with any logrotate
    lb.signal(libc::SIGUSR1);
    common::eventually("the reopen", Duration::from_secs(5), || {
        lb.log_contains("access logs reopened")
    });
    send(&mut c, 25);
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    common::eventually("all 65 lines written", Duration::from_secs(10), || {
        count(&json) + count(&moved) >= 65
    });
    std::thread::sleep(Duration::from_millis(300));
    let new = lines(&json, 0);
    let old = std::fs::read_to_string(&moved).unwrap();
    let old: Vec<&str> = old.lines().collect();
    assert_eq!(old.len() + new.len(), 65, "every line once");
    for l in old.iter().copied().chain(new.iter().map(String::as_str)) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("split line? {e}: {l}"));
        assert_eq!(v["status"], 200);
    }
    assert!(new.len() >= 25 && old.len() >= 30);
}

#[test]
fn a_log_that_cannot_keep_up_drops_counted_lines_and_never_blocks_requests() {
    let origin = Origin::start();
    let fifo = temp_path("stuck.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: creates a named pipe at a path of ours.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // A reader that never reads: once the pipe's buffer is full, every write
    // of the log writer blocks.
    let opener = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::File::open(fifo).unwrap())
    };
    let plain = temp_path("unused.log");
    let lb = Ringlb::start(&config(origin.addr, &fifo, &plain, ""));
    let _reader = opener.join().unwrap();
    let mut c = Client::connect(lb.addrs[0]);
    let start = std::time::Instant::now();
    for _ in 0..3000 {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    eprintln!("3000 requests with a stuck log in {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "requests were held up by the log"
    );
    let metrics = common::client::get(lb.admin_addr().unwrap(), "/metrics").body_str();
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ringlb_access_log_dropped_lines_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(dropped > 0.0, "no dropped line was counted\n{metrics}");
}

#[test]
fn request_ids_are_added_kept_when_valid_and_replaced_when_asked() {
    let origin = Origin::start();
    let lb = Ringlb::start(&common::proxy_config(&[origin.addr], "", ""));
    let send = |lb: &Ringlb, id: Option<&str>| -> String {
        let mut c = Client::connect(lb.addr());
        let id = id.map_or(String::new(), |i| format!("X-Request-Id: {i}\r\n"));
        c.send(format!("GET / HTTP/1.1\r\nHost: x\r\n{id}traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n").as_bytes());
        assert_eq!(c.read_response(false).status, 200);
        let head = origin.heads().pop().unwrap();
        assert!(
            head.contains(
                "\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
            ),
            "traceparent untouched: {head}"
        );
        assert_eq!(
            head.matches("X-Request-Id").count() + head.matches("x-request-id").count(),
            1,
            "{head}"
        );
        header(&head, "x-request-id").unwrap().to_string()
    };
    let a = send(&lb, None);
    let b = send(&lb, None);
    assert!(
        a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()) && a != b,
        "{a} {b}"
    );
    assert_eq!(send(&lb, Some("client-id-123")), "client-id-123");
    let replaced = send(&lb, Some("bad id with spaces"));
    assert_ne!(replaced, "bad id with spaces");
    assert_eq!(replaced.len(), 32);

    let always = Ringlb::start(&common::proxy_config(
        &[origin.addr],
        "",
        "[client]\nrequest_id = \"replace\"",
    ));
    let r = send(&always, Some("client-id-123"));
    assert!(r != "client-id-123" && r.len() == 32, "{r}");
}

#[test]
fn the_event_log_filters_by_level_and_speaks_json() {
    let origin = Origin::start();
    let quiet = Ringlb::start(&common::proxy_config(
        &[origin.addr],
        "",
        "log_format = \"json\"",
    ));
    for line in quiet.log_text().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["time"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
    }
    assert!(quiet.log_contains("\"level\":\"info\""));
    // RINGLB_LOG=warn hides the start-up lines; a rejected request still logs.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = common::proxy_config(&[origin.addr], "", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = temp_path("warn.toml");
    std::fs::write(&path, cfg).unwrap();
    let child = std::process::Command::new(common::bin())
        .args(["--config", path.to_str().unwrap()])
        .env("RINGLB_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    common::eventually("ringlb listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let mut c = Client::connect(addr);
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response(false).status, 400);
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains(" INFO "), "{text}");
    assert!(
        text.contains(" WARN ") && text.contains("missing Host"),
        "{text}"
    );
}
