//! Signals, taken synchronously by one thread with sigwait (they are blocked in
//! every thread, so no async-signal-safety concerns reach the workers):
//!
//! - SIGTERM / SIGINT: the first starts a graceful drain, a second exits at once;
//! - SIGHUP: reload the configuration file (see `reload`);
//! - SIGUSR1: reopen the access log files (after logrotate moved them);
//! - SIGUSR2: ignored with one line: a binary upgrade is started by running
//!   the new binary with `--upgrade` (see `handover`).
//!
//! None of them ever kills ringlb by its default disposition.

use super::Shutdown;
use std::sync::Arc;

const HANDLED: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "SIGUSR2",
    }
}

/// Blocks the handled signals in the calling thread (threads spawned later
/// inherit the mask) and starts the thread that waits for them.
pub fn install(shutdown: Arc<Shutdown>) {
    let set = signal_set();
    // SAFETY: valid, initialised signal set; only the calling thread's mask changes.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::Builder::new()
        .name("ringlb-signals".into())
        .spawn(move || {
            let mut draining = false;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and blocked in this thread.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                let name = name(sig);
                match sig {
                    libc::SIGTERM | libc::SIGINT if !draining => {
                        crate::info!(
                            "{name} received: no longer accepting, draining in-flight requests"
                        );
                        shutdown.request();
                        super::notify::stopping();
                        draining = true;
                    }
                    libc::SIGTERM | libc::SIGINT => {
                        crate::warn!("second {name}: exiting without waiting for the drain");
                        std::process::exit(1);
                    }
                    libc::SIGHUP if !draining => super::reload::on_sighup(),
                    libc::SIGHUP => crate::warn!("SIGHUP received while draining: ignored"),
                    libc::SIGUSR1 => {
                        crate::info!("SIGUSR1 received: reopening the access logs");
                        crate::access_log::writer::request_reopen();
                    }
                    _ => crate::warn!(
                        "SIGUSR2 received: ignored; to upgrade the binary, run the new one with \
                         --config FILE --upgrade (with upgrade_socket set)"
                    ),
                }
            }
        })
        .expect("spawn signal thread");
}
