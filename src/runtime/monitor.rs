//! Noticing a thread that dies. Every long-lived thread of ringlb (workers,
//! the health thread) holds an `ExitNotice`, which reports the thread's end
//! (by return or by unwinding) to the main thread. Ending is expected only
//! after a shutdown request; any other end, or a panic, means the process is
//! no longer what it was configured to be: the main thread logs it, asks the
//! other threads to drain, and the process exits non-zero rather than running
//! on with fewer workers or without health checks.

use super::Shutdown;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// One thread's end.
pub struct ThreadExit {
    pub name: String,
    pub worker: bool,
    pub panicked: bool,
}

/// Reports its thread's end when dropped.
pub struct ExitNotice {
    name: String,
    worker: bool,
    tx: Sender<ThreadExit>,
}

impl ExitNotice {
    pub fn new(name: String, worker: bool, tx: Sender<ThreadExit>) -> ExitNotice {
        ExitNotice { name, worker, tx }
    }
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(ThreadExit {
            name: std::mem::take(&mut self.name),
            worker: self.worker,
            panicked: std::thread::panicking(),
        });
    }
}

/// Waits until `workers` workers have ended. Returns false if any thread
/// ended on its own (see the module doc); the others are then asked to drain.
pub fn wait_for_workers(
    exits: &Receiver<ThreadExit>,
    workers: usize,
    shutdown: &Arc<Shutdown>,
) -> bool {
    let mut ok = true;
    let mut left = workers;
    while left > 0 {
        let Ok(exit) = exits.recv() else {
            break;
        };
        if exit.worker {
            left -= 1;
        }
        if exit.panicked || !shutdown.is_requested() {
            crate::error!(
                "thread {} {}: ringlb stops (exit status 70) instead of running on without it",
                exit.name,
                if exit.panicked {
                    "panicked"
                } else {
                    "ended unexpectedly"
                }
            );
            ok = false;
            shutdown.request();
        }
    }
    ok
}
