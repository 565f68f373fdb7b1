//! `tuning/ringlb.service` passes `systemd-analyze verify` with no warning
//! (unknown keys and bad values are only warnings there, so any line about
//! the unit fails the test), pointed at the built binary.

mod common;

use common::{bin, temp_path};
use std::process::Command;

fn verify(unit_text: &str) -> Option<(bool, String)> {
    let dir = temp_path("unit");
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("ringlb.service");
    std::fs::write(&unit, unit_text.replace("/usr/local/bin/ringlb", bin())).unwrap();
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
    {
        Ok(out) => out,
        Err(_) if std::env::var_os("RINGLB_REQUIRE_SYSTEMD_ANALYZE").is_none() => {
            eprintln!("systemd-analyze not installed: unit not verified (.ci/run installs it)");
            return None;
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let about_unit = said.lines().any(|l| l.contains("ringlb.service"));
    Some((out.status.success() && !about_unit, said))
}

#[test]
fn the_unit_verifies_cleanly_and_a_spoiled_one_does_not() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tuning/ringlb.service"
    ))
    .unwrap();
    let Some((ok, said)) = verify(&text) else {
        return;
    };
    assert!(ok, "{said}");
    // The check itself can fail: a misspelt option and a bad value are caught.
    let (ok, _) = verify(&text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")).unwrap();
    assert!(!ok, "an unknown key must fail the check");
    let (ok, _) = verify(&text.replace("Type=notify", "Type=notifyy")).unwrap();
    assert!(!ok, "a bad value must fail the check");
    for key in [
        "Type=notify\n",
        "ExecReload=",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "io_uring_setup io_uring_enter io_uring_register",
    ] {
        assert!(text.contains(key), "the unit sets {key}");
    }
}
