use super::*;

fn config(top: &str, upstream: &str) -> Config {
    let text = format!(
        "workers = 2\n{top}\n[[listener]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n{upstream}\n"
    );
    Config::parse(&text, "test.toml").expect("valid config")
}

/// A well-tuned edge host.
fn good_host() -> Host {
    Host {
        nofile_hard: 1_048_576,
        nr_open: 1_048_576,
        file_max: 9_000_000,
        port_range: (1024, 65000),
        tw_reuse: 1,
        somaxconn: 8192,
        syn_backlog: 8192,
        io_uring_disabled: Some(0),
        io_uring_probe: Ok(()),
        memlock: 8 << 20,
        kernel: (6, 1),
    }
}

fn row<'a>(rows: &'a [Row], setting: &str) -> &'a Row {
    rows.iter().find(|r| r.setting == setting).expect(setting)
}

#[test]
fn a_tuned_host_fits_a_large_config() {
    let c = config("[limits]\nmax_connections = 50000", "max_idle = 256");
    let rows = assess(&c, &good_host());
    assert!(!limits_anything(&rows), "{rows:#?}");
    assert!(rows
        .iter()
        .all(|r| r.verdict == Verdict::Ok && r.fix.is_empty()));
}

#[test]
fn descriptors_count_clients_upstream_connections_and_ringlbs_own() {
    let c = config("[limits]\nmax_connections = 10000", "max_idle = 100");
    let needs = Needs::of(&c, &good_host());
    // Each client's request may hold an upstream connection, and each of 2
    // workers may pool 100 idle ones per server (2 servers).
    assert_eq!(needs.upstream, 10_000 + 2 * 2 * 100);
    assert_eq!(needs.per_server, 10_000 + 2 * 100);
    assert_eq!(
        needs.descriptors,
        10_000 + needs.upstream + fd_limit::reserved(&c)
    );
    // An in-flight limit bounds the upstream side.
    let c = config(
        "[limits]\nmax_connections = 10000",
        "max_idle = 100\nmax_in_flight = 500\nmax_in_flight_per_server = 300",
    );
    let needs = Needs::of(&c, &good_host());
    assert_eq!(needs.upstream, 500 + 400);
    assert_eq!(needs.per_server, 300 + 200);
}

#[test]
fn more_connections_to_one_server_than_ephemeral_ports_limit_the_config() {
    // 100,000 clients whose requests may all go to one server (the other
    // down) need more source ports toward it than a port range holds.
    let c = config("[limits]\nmax_connections = 100000", "");
    let rows = assess(&c, &good_host());
    assert_eq!(
        row(&rows, "net.ipv4.ip_local_port_range").verdict,
        Verdict::Limits
    );
    // A per-server in-flight limit brings it back within range.
    let c = config(
        "[limits]\nmax_connections = 100000",
        "max_in_flight_per_server = 20000",
    );
    assert!(!limits_anything(&assess(&c, &good_host())));
}

#[test]
fn a_low_descriptor_limit_limits_a_configured_cap_and_says_how_to_fix_it() {
    let c = config("[limits]\nmax_connections = 100000", "");
    let host = Host {
        nofile_hard: 65_536,
        ..good_host()
    };
    let rows = assess(&c, &host);
    let r = row(&rows, "RLIMIT_NOFILE (hard)");
    assert_eq!(r.verdict, Verdict::Limits);
    assert_eq!(r.now, "65536");
    assert!(r.fix.contains("LimitNOFILE="), "{}", r.fix);
    assert!(limits_anything(&rows));
}

#[test]
fn without_a_configured_cap_a_low_limit_is_advice_not_failure() {
    let c = config("", "");
    let host = Host {
        nofile_hard: 1024,
        ..good_host()
    };
    let rows = assess(&c, &host);
    let r = row(&rows, "RLIMIT_NOFILE (hard)");
    assert_eq!(r.verdict, Verdict::Advice, "{r:?}");
    assert!(r.why.contains("derived"), "{}", r.why);
    assert!(!limits_anything(&rows));
}

#[test]
fn each_host_limit_is_caught() {
    let c = config("[limits]\nmax_connections = 50000", "max_idle = 10");
    type Spoil = fn(&mut Host);
    let cases: [(&str, Spoil); 5] = [
        ("fs.nr_open", |h| h.nr_open = 1024),
        ("fs.file-max", |h| h.file_max = 8192),
        ("net.ipv4.ip_local_port_range", |h| {
            h.port_range = (40000, 60000)
        }),
        ("net.core.somaxconn", |h| h.somaxconn = 128),
        ("io_uring", |h| h.io_uring_probe = Err("EPERM".into())),
    ];
    for (setting, spoil) in cases {
        let mut host = good_host();
        spoil(&mut host);
        let rows = assess(&c, &host);
        let limiting: Vec<_> = rows
            .iter()
            .filter(|r| r.verdict != Verdict::Ok)
            .map(|r| r.setting)
            .collect();
        let expected = if setting == "io_uring" {
            // io = "auto" (the default) falls back to epoll: advice only.
            assert!(!limits_anything(&rows));
            assert_eq!(row(&rows, setting).verdict, Verdict::Advice);
            continue;
        } else {
            vec![setting]
        };
        assert_eq!(limiting, expected, "{setting}");
        assert!(limits_anything(&rows), "{setting}");
    }
    let c = config("io = \"uring\"", "");
    let host = Host {
        io_uring_probe: Err("EPERM".into()),
        ..good_host()
    };
    assert_eq!(row(&assess(&c, &host), "io_uring").verdict, Verdict::Limits);
    let c = config("io = \"epoll\"", "");
    assert_eq!(row(&assess(&c, &host), "io_uring").verdict, Verdict::Ok);
}

#[test]
fn memlock_matters_only_before_linux_5_12() {
    let c = config("", "");
    let old = Host {
        kernel: (5, 10),
        memlock: 64 * 1024,
        ..good_host()
    };
    let r = assess(&c, &old);
    assert_eq!(row(&r, "RLIMIT_MEMLOCK").verdict, Verdict::Limits);
    let new = Host {
        kernel: (6, 1),
        ..old
    };
    assert_eq!(
        row(&assess(&c, &new), "RLIMIT_MEMLOCK").verdict,
        Verdict::Ok
    );
}

#[test]
fn json_is_one_object_with_every_row() {
    let c = config("[limits]\nmax_connections = 100000", "");
    let host = Host {
        somaxconn: 128,
        ..good_host()
    };
    let rows = assess(&c, &host);
    let needs = Needs::of(&c, &host);
    let j = json("a \"quoted\" path", &needs, &rows);
    assert!(
        j.starts_with("{\"config\":\"a \\\"quoted\\\" path\""),
        "{j}"
    );
    assert!(j.contains("\"ok\":false"));
    assert_eq!(j.matches("\"setting\":").count(), rows.len());
    assert!(j.contains("\"setting\":\"net.core.somaxconn\",\"now\":\"128\""));
    let t = text("f.toml", &needs, &rows);
    assert!(t.contains("net.core.somaxconn") && t.contains("LIMITS"));
    assert!(t.contains("sysctl -w net.core.somaxconn=8192"));
}
