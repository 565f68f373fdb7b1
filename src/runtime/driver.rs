//! Building a worker's monoio runtime: io_uring with COOP_TASKRUN + SINGLE_ISSUER
//! (each ring is created and used by one thread), or the epoll driver.
//! `io = "auto"` falls back to epoll when the kernel refuses io_uring.

use crate::config::IoMode;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, Runtime, RuntimeBuilder};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// io_uring setup flags. COOP_TASKRUN + SINGLE_ISSUER measured fastest here
/// (see bench-results); the others stay selectable for measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringSetup {
    /// COOP_TASKRUN | SINGLE_ISSUER (default).
    Coop,
    /// DEFER_TASKRUN | SINGLE_ISSUER.
    Defer,
    /// monoio's default ring (no setup flags).
    Plain,
}

pub enum WorkerRuntime {
    Uring(Runtime<TimeDriver<IoUringDriver>>),
    Epoll(Runtime<TimeDriver<LegacyDriver>>),
}

impl WorkerRuntime {
    pub fn name(&self, setup: UringSetup) -> &'static str {
        match (self, setup) {
            (WorkerRuntime::Uring(_), UringSetup::Coop) => "io_uring (coop_taskrun, single_issuer)",
            (WorkerRuntime::Uring(_), UringSetup::Defer) => {
                "io_uring (defer_taskrun, single_issuer)"
            }
            (WorkerRuntime::Uring(_), UringSetup::Plain) => "io_uring (no setup flags)",
            (WorkerRuntime::Epoll(_), _) => "epoll",
        }
    }

    /// The driver's short name (for build info).
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerRuntime::Uring(_) => "io_uring",
            WorkerRuntime::Epoll(_) => "epoll",
        }
    }

    pub fn block_on<F: std::future::Future>(self, fut: F) -> F::Output {
        match self {
            WorkerRuntime::Uring(mut rt) => rt.block_on(fut),
            WorkerRuntime::Epoll(mut rt) => rt.block_on(fut),
        }
    }
}

fn uring(entries: u32, setup: UringSetup) -> io::Result<WorkerRuntime> {
    let mut flags = io_uring::IoUring::builder();
    match setup {
        UringSetup::Coop => {
            flags.setup_coop_taskrun().setup_single_issuer();
        }
        UringSetup::Defer => {
            flags.setup_defer_taskrun().setup_single_issuer();
        }
        UringSetup::Plain => {}
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(entries)
        .uring_builder(flags)
        .enable_timer()
        .build()
        .map(WorkerRuntime::Uring)
}

fn epoll(entries: u32) -> io::Result<WorkerRuntime> {
    RuntimeBuilder::<LegacyDriver>::new()
        .with_entries(entries)
        .enable_timer()
        .build()
        .map(WorkerRuntime::Epoll)
}

static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// Builds the runtime for `mode`. Auto logs one line (for all workers) when it
/// falls back to epoll.
pub fn build(mode: IoMode, entries: u32, setup: UringSetup) -> io::Result<WorkerRuntime> {
    match mode {
        IoMode::Epoll => epoll(entries),
        IoMode::Uring => uring(entries, setup)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring unavailable: {e}"))),
        IoMode::Auto => match uring(entries, setup) {
            Ok(rt) => Ok(rt),
            Err(e) => {
                if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    crate::warn!(
                        "io_uring unavailable ({e}; io_uring_disabled sysctl, seccomp or \
                         RLIMIT_MEMLOCK?): all workers use epoll"
                    );
                }
                epoll(entries)
            }
        },
    }
}
