//! `ringlb doctor` on this machine: a config that fits and one that does not,
//! the same host, told apart by exit status and by exactly the rows that differ.

mod common;

use common::{bin, temp_path, with_nofile};
use serde_json::Value;
use std::process::{Command, Output};

fn config(max_connections: u32) -> std::path::PathBuf {
    let path = temp_path("doctor.toml");
    std::fs::write(
        &path,
        format!(
            "workers = 1\n[limits]\nmax_connections = {max_connections}\n\n\
             [[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\nmax_idle = 8\n"
        ),
    )
    .unwrap();
    path
}

/// Runs the doctor with an open-file limit of 4096 (soft and hard).
fn doctor(config: &std::path::Path, json: bool) -> Output {
    let mut c = Command::new(bin());
    c.arg("doctor").arg("--config").arg(config);
    if json {
        c.arg("--json");
    }
    with_nofile(4096)(&mut c);
    c.output().expect("run ringlb doctor")
}

fn rows(out: &Output) -> Vec<(String, String)> {
    let v: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["setting"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_config_that_fits_and_one_that_does_not_differ_in_the_descriptor_row_alone() {
    let fits = config(1000);
    let too_many = config(5000);
    let (a, b) = (doctor(&fits, true), doctor(&too_many, true));
    let (ra, rb) = (rows(&a), rows(&b));
    assert_eq!(ra.len(), rb.len());
    let differ: Vec<_> = ra
        .iter()
        .zip(&rb)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| (x.0.as_str(), x.1.as_str(), y.1.as_str()))
        .collect();
    assert_eq!(differ, [("RLIMIT_NOFILE (hard)", "ok", "LIMITS")]);
    // 5,000 clients and as many upstream connections do not fit 4,096 descriptors.
    assert_eq!(
        b.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&b.stdout)
    );
    // The one that fits exits 0 unless this host limits it elsewhere, which
    // its own rows would then say.
    let host_limits = ra.iter().any(|r| r.1 == "LIMITS");
    assert_eq!(
        a.status.code(),
        Some(if host_limits { 1 } else { 0 }),
        "{ra:?}"
    );

    // The text report names the setting, the value now and the fix.
    let text = doctor(&too_many, false);
    let out = String::from_utf8_lossy(&text.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("RLIMIT_NOFILE (hard)"))
        .expect("a row for the descriptor limit");
    assert!(line.contains("4096") && line.contains("LIMITS"), "{line}");
    assert!(out.contains("LimitNOFILE="), "{out}");
    assert_eq!(text.status.code(), Some(1));
}

#[test]
fn a_bad_config_is_a_usage_error_with_its_reason() {
    let path = temp_path("doctor-bad.toml");
    std::fs::write(&path, "workers = \"many\"\n").unwrap();
    let out = doctor(&path, false);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workers"), "{err}");
    let out = Command::new(bin()).arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "doctor without --config");
}
