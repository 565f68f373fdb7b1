//! The doctor's report: an aligned table for people, JSON for scripts.

use super::{Needs, Row};
use std::fmt::Write;

/// A table with one row per setting, then what to do about each gap.
pub fn text(source: &str, needs: &Needs, rows: &[Row]) -> String {
    let mut out = format!(
        "ringlb doctor: {source}\n  needs {} client connections ({}), {} upstream connections, \
         {} descriptors\n\n",
        needs.clients,
        if needs.clients_configured {
            "max_connections"
        } else {
            "derived from the open-file limit"
        },
        needs.upstream,
        needs.descriptors
    );
    let width = |f: fn(&Row) -> &str, title: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let ws = width(|r| r.setting, "setting");
    let wn = width(|r| &r.now, "now");
    let wd = width(|r| &r.needed, "needed");
    let _ = writeln!(
        out,
        "{:ws$}  {:wn$}  {:wd$}  {:6}  why",
        "setting", "now", "needed", "status"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:ws$}  {:wn$}  {:wd$}  {:6}  {}",
            r.setting,
            r.now,
            r.needed,
            r.verdict.label(),
            r.why
        );
    }
    let fixes: Vec<&Row> = rows.iter().filter(|r| !r.fix.is_empty()).collect();
    if fixes.is_empty() {
        out.push_str("\nnothing on this host limits the config\n");
    } else {
        out.push_str("\nto fix:\n");
        for r in fixes {
            let _ = writeln!(out, "  {:ws$}  {}", r.setting, r.fix);
        }
    }
    out
}

/// `{"config": ..., "needs": {...}, "ok": bool, "rows": [{...}]}`.
pub fn json(source: &str, needs: &Needs, rows: &[Row]) -> String {
    let mut out = String::from("{\"config\":");
    quote(&mut out, source);
    let _ = write!(
        out,
        ",\"needs\":{{\"clients\":{},\"clients_configured\":{},\"upstream\":{},\"descriptors\":{}}}",
        needs.clients, needs.clients_configured, needs.upstream, needs.descriptors
    );
    let _ = write!(out, ",\"ok\":{},\"rows\":[", !super::limits_anything(rows));
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"setting\":");
        quote(&mut out, r.setting);
        for (key, value) in [
            ("now", &r.now),
            ("needed", &r.needed),
            ("why", &r.why),
            ("fix", &r.fix),
        ] {
            let _ = write!(out, ",\"{key}\":");
            quote(&mut out, value);
        }
        out.push_str(",\"status\":");
        quote(&mut out, r.verdict.label());
        out.push('}');
    }
    out.push_str("]}\n");
    out
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
