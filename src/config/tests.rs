use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml")
}

const MINIMAL: &str = r#"
[[listener]]
listen = "127.0.0.1:8080"
upstream = "app"

[[upstream]]
name = "app"
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;

#[test]
fn minimal_contract_file_works() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.upstreams[0].servers.len(), 2);
    assert!(matches!(c.listeners[0].default_action, Action::Proxy(0)));
    assert_eq!(c.io, IoMode::Auto);
    assert!(c.workers >= 1);
}

#[test]
fn demo_config_is_valid() {
    let c = parse(DEMO_CONFIG).unwrap();
    assert_eq!(c.listeners.len(), 3);
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = MINIMAL.replace("name = \"app\"", "name = \"app\"\nretries_typo = 3");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.line, 8, "{e}");
    assert!(e.to_string().contains("retries_typo"), "{e}");
    assert!(e.to_string().starts_with("test.toml:8:"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let e = parse(&format!("workers = \"many\"\n{MINIMAL}")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (1, "workers"), "{e}");
    let text = MINIMAL.replace("name = \"app\"", "name = \"app\"\nretries = \"3\"");
    let e = parse(&text).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (8, "retries"), "{e}");
    let text = MINIMAL.replace(
        "name = \"app\"",
        "name = \"app\"\nhealth_check = { path = 5 }",
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "path", "{e}");
}

#[test]
fn unknown_upstream_reference() {
    let e = parse(&MINIMAL.replace("upstream = \"app\"", "upstream = \"nope\"")).unwrap_err();
    assert_eq!(e.line, 4);
    assert_eq!(e.key, "upstream");
    assert!(e.message.contains("nope"));
}

#[test]
fn bad_duration_and_address() {
    let e = parse(&MINIMAL.replace(
        "name = \"app\"",
        "name = \"app\"\nconnect_timeout = \"3 days\"",
    ))
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (8, "connect_timeout"), "{e}");
    let e = parse(&MINIMAL.replace("127.0.0.1:9002", "not an address")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (8, "servers"), "{e}");
}

#[test]
fn io_mode_and_workers() {
    let c = parse(&format!("workers = 3\nio = \"epoll\"\n{MINIMAL}")).unwrap();
    assert_eq!((c.workers, c.io), (3, IoMode::Epoll));
    let e = parse(&format!("io = \"kqueue\"\n{MINIMAL}")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (1, "io"));
    let e = parse(&format!("workers = 0\n{MINIMAL}")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (1, "workers"));
}

#[test]
fn direct_response_and_routes() {
    let c = parse(
        r#"
[[listener]]
listen = "127.0.0.1:0"
status = 503
body = "maintenance"

[[listener.route]]
path_prefix = "/healthz"
status = 200
body = "ok"
"#,
    )
    .unwrap();
    match &c.listeners[0].default_action {
        Action::Respond(r) => assert_eq!((r.status, r.body.as_str()), (503, "maintenance")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.listeners[0].routes[0].path_prefix, "/healthz");
}

#[test]
fn listener_needs_an_action() {
    let e = parse("[[listener]]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn syntax_error_has_position() {
    let e = parse("workers = = 2\n").unwrap_err();
    assert_eq!(e.line, 1, "{e}");
}

#[test]
fn check_refuses_every_address_collision_run_would_hit() {
    let cfg = |a: &str, b: &str, admin: &str| {
        format!(
            "[[listener]]\nlisten = \"{a}\"\nstatus = 200\n[[listener]]\nlisten = \"{b}\"\nstatus = 200\n{admin}"
        )
    };
    for (a, b, admin) in [
        ("127.0.0.1:8080", "127.0.0.1:8080", ""),
        ("0.0.0.0:8080", "127.0.0.1:8080", ""),
        ("127.0.0.1:8080", "0.0.0.0:8080", ""),
        ("[::]:8080", "[::1]:8080", ""),
        (
            "127.0.0.1:8080",
            "127.0.0.1:8081",
            "[admin]\nlisten = \"127.0.0.1:8081\"",
        ),
        (
            "0.0.0.0:8080",
            "127.0.0.1:8081",
            "[admin]\nlisten = \"127.0.0.1:8080\"",
        ),
    ] {
        let e = parse(&cfg(a, b, admin)).unwrap_err();
        assert!(
            e.to_string().contains("collides with"),
            "{a} {b} {admin}: {e}"
        );
        assert!(e.line > 0 && e.key == "listen", "{e}");
    }
    for (a, b, admin) in [
        ("127.0.0.1:8080", "127.0.0.2:8080", ""),
        ("0.0.0.0:8080", "[::]:8080", ""),
        (
            "127.0.0.1:0",
            "127.0.0.1:0",
            "[admin]\nlisten = \"127.0.0.1:0\"",
        ),
        (
            "127.0.0.1:8080",
            "127.0.0.1:8081",
            "[admin]\nlisten = \"127.0.0.1:8082\"",
        ),
    ] {
        assert!(parse(&cfg(a, b, admin)).is_ok(), "{a} {b} {admin}");
    }
}

/// MINIMAL with `top` before the listener and `upstream` lines in the pool.
fn limited(top: &str, upstream: &str) -> Result<Config, ConfigError> {
    let text = format!("workers = 2\n{top}\n{MINIMAL}").replace(
        "servers = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]",
        &format!("servers = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n{upstream}"),
    );
    parse(&text)
}

#[test]
fn shedding_keys_of_the_contract_parse() {
    let c = limited(
        "[limits]\nmax_connections = 1000\nmax_connections_per_ip = 20\nmax_memory_mb = 512",
        "max_in_flight = 40\nmax_in_flight_per_server = 30\nqueue_size = 100\nqueue_timeout = \"250ms\"\n\
         [upstream.adaptive_concurrency]\nenabled = true\nmin_limit = 2\nmax_limit = 40\n\
         initial_limit = 10\ntolerance = 1.5\nwindow = \"200ms\"",
    )
    .unwrap();
    assert_eq!(c.limits.max_connections, Some(1000));
    assert_eq!(c.limits.max_connections_per_ip, Some(20));
    assert_eq!(c.limits.max_memory_mb, Some(512));
    let a = &c.upstreams[0].admission;
    assert_eq!(a.max_in_flight, Some(40));
    assert_eq!(a.max_in_flight_per_server, Some(30));
    assert_eq!(a.queue_size, 100);
    assert_eq!(a.queue_timeout, Duration::from_millis(250));
    let g = a.adaptive.unwrap();
    assert_eq!((g.min_limit, g.max_limit, g.initial_limit), (2, 40, 10));
    assert_eq!((g.tolerance, g.window_ms), (1.5, 200));
    let d = limited("", "").unwrap();
    assert_eq!(
        d.limits.max_connections, None,
        "derived from the open-file limit at start"
    );
    assert_eq!(d.upstreams[0].admission.queue_size, 0);
    assert!(d.upstreams[0].admission.adaptive.is_none());
}

#[test]
fn shedding_key_errors_name_the_key_and_line() {
    let cases: [(&str, &str, &str, &str); 11] = [
        (
            "[limits]\nat_connection_cap = \"wait\"",
            "",
            "at_connection_cap",
            "expected \"refuse\" or \"pause\"",
        ),
        (
            "[limits]\nmax_memory_mb = 1",
            "",
            "max_memory_mb",
            "below the number of workers",
        ),
        ("", "queue_size = 10", "queue_size", "needs a limit"),
        (
            "",
            "max_in_flight = 4\nqueue_timeout = \"1s\"",
            "queue_timeout",
            "queue_size",
        ),
        (
            "",
            "max_in_flight = 1",
            "max_in_flight",
            "below the number of workers",
        ),
        (
            "[limits]\nmax_connections = 1",
            "",
            "max_connections",
            "below the number of workers",
        ),
        (
            "[limits]\nmax_connections_per_ip = 0",
            "",
            "max_connections_per_ip",
            "",
        ),
        (
            "",
            "max_in_flight = 8\nqueue_size = 4\nqueue_timeout = \"100000h\"",
            "queue_timeout",
            "at most 720h",
        ),
        (
            "",
            "[upstream.adaptive_concurrency]\nenabled = false\nmin_limit = 5\nmax_limit = 2",
            "max_limit",
            "below min_limit",
        ),
        (
            "",
            "max_in_flight = 10\n[upstream.adaptive_concurrency]\nenabled = true\nmax_limit = 20",
            "max_limit",
            "above max_in_flight",
        ),
        (
            "",
            "max_in_flight = 10\n[upstream.adaptive_concurrency]\nenabled = true\nmin_limit = 6",
            "min_limit",
            "share",
        ),
    ];
    for (top, upstream, key, says) in cases {
        let e = limited(top, upstream).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:"), "{e}");
        assert!(
            e.contains(key) && e.contains(says),
            "{top} / {upstream}: {e}"
        );
    }
}
