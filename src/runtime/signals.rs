//! SIGTERM / SIGINT: the first starts a graceful drain, a second exits at once.
//! Signals are blocked in every thread and taken synchronously by one thread
//! with sigwait, so no async-signal-safety concerns reach the workers.

use super::Shutdown;
use std::sync::Arc;

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM/SIGINT in the calling thread (threads spawned later inherit it)
/// and starts the thread that waits for them.
pub fn install(shutdown: Arc<Shutdown>) {
    let set = signal_set();
    // SAFETY: valid, initialised signal set; only the calling thread's mask changes.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::Builder::new()
        .name("ringlb-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and blocked in this thread.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                let name = if sig == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if first {
                    crate::info!(
                        "{name} received: no longer accepting, draining in-flight requests"
                    );
                    shutdown.request();
                    first = false;
                } else {
                    crate::warn!("second {name}: exiting without waiting for the drain");
                    std::process::exit(1);
                }
            }
        })
        .expect("spawn signal thread");
}
