//! The event log on stderr: one line per event with a UTC timestamp and a
//! level, as text or as JSON (`log_format`), below a level filter
//! (`log_level`, or the `RINGLB_LOG` environment variable, which wins), and a
//! per-thread rate limiter so that an attack never turns into a log line per
//! request. (Access logs are `access_log`.)

use std::cell::Cell;
use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }

    /// `info`, `warn` or `error` (any case).
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

static MIN_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the level filter and the format (at start, before the workers).
/// `RINGLB_LOG` in the environment overrides `level` when it names a level.
pub fn configure(level: Level, json: bool) {
    let level = std::env::var("RINGLB_LOG")
        .ok()
        .and_then(|v| Level::parse(&v))
        .unwrap_or(level);
    MIN_LEVEL.store(level as u8, Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
}

/// Writes one log line. Used through the `info!`, `warn!` and `error!` macros.
pub fn write(level: Level, args: Arguments<'_>) {
    if (level as u8) < MIN_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, s) = civil_time(now.as_secs());
    let ms = now.subsec_millis();
    let mut err = std::io::stderr().lock();
    if JSON.load(Ordering::Relaxed) {
        let message = args.to_string();
        let _ = writeln!(
            err,
            "{{\"time\":\"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z\",\"level\":\"{}\",\"message\":\"{}\"}}",
            level.as_str().to_ascii_lowercase(),
            json_escape(&message)
        );
        return;
    }
    let _ = writeln!(
        err,
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z {} {args}",
        level.as_str()
    );
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the epoch to (year, month, day, hour, minute, second) in UTC.
pub(crate) fn civil_time(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) };
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) };
}

thread_local! {
    static WINDOW: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
}

/// Lines per second and per worker that `rate_limited` lets through.
const LINES_PER_SECOND: u32 = 5;

/// Logs a warning unless this thread already logged `LINES_PER_SECOND` of them this
/// second; the first line of the next second reports how many were dropped.
pub fn rate_limited(args: Arguments<'_>) {
    let sec = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    WINDOW.with(|w| {
        let (window, count) = w.get();
        if window != sec {
            if count > LINES_PER_SECOND {
                write(
                    Level::Warn,
                    format_args!("{} similar messages suppressed", count - LINES_PER_SECOND),
                );
            }
            w.set((sec, 1));
            write(Level::Warn, args);
        } else {
            w.set((window, count.saturating_add(1)));
            if count < LINES_PER_SECOND {
                write(Level::Warn, args);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::civil_time;

    #[test]
    fn civil_time_known_dates() {
        assert_eq!(civil_time(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_time(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_time(1_795_696_496), (2026, 11, 26, 12, 34, 56));
    }
}
