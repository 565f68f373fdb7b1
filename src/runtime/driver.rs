//! Building a worker's monoio runtime: io_uring with COOP_TASKRUN + SINGLE_ISSUER
//! (each ring is created and used by one thread), or the epoll driver.
//! `io = "auto"` falls back to epoll when the kernel refuses io_uring.

use crate::config::IoMode;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, Runtime, RuntimeBuilder};
use std::io;

pub enum WorkerRuntime {
    Uring(Runtime<TimeDriver<IoUringDriver>>),
    Epoll(Runtime<TimeDriver<LegacyDriver>>),
}

impl WorkerRuntime {
    pub fn name(&self) -> &'static str {
        match self {
            WorkerRuntime::Uring(_) => "io_uring (coop_taskrun, single_issuer)",
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

fn uring(entries: u32) -> io::Result<WorkerRuntime> {
    let mut flags = io_uring::IoUring::builder();
    flags.setup_coop_taskrun().setup_single_issuer();
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

/// Builds the runtime for `mode`. Auto logs one line when it falls back.
pub fn build(mode: IoMode, entries: u32, worker: usize) -> io::Result<WorkerRuntime> {
    match mode {
        IoMode::Epoll => epoll(entries),
        IoMode::Uring => uring(entries)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring unavailable: {e}"))),
        IoMode::Auto => match uring(entries) {
            Ok(rt) => Ok(rt),
            Err(e) => {
                crate::warn!("worker {worker}: io_uring unavailable ({e}); falling back to epoll");
                epoll(entries)
            }
        },
    }
}
