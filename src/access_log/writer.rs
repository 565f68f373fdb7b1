//! The log writer thread: appends the workers' batches to their files and
//! returns the emptied buffers; reopens the files when asked (SIGUSR1).

use super::{Batch, BUFFERS_PER_FILE, BUFFER_BYTES};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

/// Where one log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` and `stdout` mean standard output.
    pub fn parse(path: &str) -> Target {
        match path {
            "-" | "stdout" => Target::Stdout,
            p => Target::File(PathBuf::from(p)),
        }
    }

    fn open(&self) -> std::io::Result<Option<File>> {
        match self {
            Target::Stdout => Ok(None),
            Target::File(p) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Some),
        }
    }
}

static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks the writer to reopen its files (the signal thread, on SIGUSR1).
pub fn request_reopen() {
    REOPEN.store(true, Ordering::Release);
}

/// What each worker needs to log: the channel to the writer, and per file
/// the channel the writer returns its buffers on.
pub struct WorkerEnds {
    pub to_writer: SyncSender<Batch>,
    pub spares: Vec<Receiver<Vec<u8>>>,
}

/// Opens the files and starts the writer. Fails (naming the file) if one
/// cannot be opened, so a config that cannot log does not run. The writer
/// ends once every worker has dropped its ends, after writing what they sent.
pub fn start(
    targets: Vec<Target>,
    workers: usize,
) -> std::io::Result<(Vec<WorkerEnds>, std::thread::JoinHandle<()>)> {
    let mut files = Vec::new();
    for t in &targets {
        let f = t
            .open()
            .map_err(|e| std::io::Error::new(e.kind(), format!("access log {t:?}: {e}")))?;
        files.push(f);
    }
    // Every buffer of every worker can be in the queue at once.
    let (to_writer, from_workers) = sync_channel(workers * targets.len() * BUFFERS_PER_FILE + 1);
    let mut returns: Vec<Vec<SyncSender<Vec<u8>>>> = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..workers {
        let mut senders = Vec::new();
        let mut spares = Vec::new();
        for _ in &targets {
            let (tx, rx) = sync_channel(BUFFERS_PER_FILE);
            // The worker starts with one buffer filling; the others wait here.
            for _ in 1..BUFFERS_PER_FILE {
                let _ = tx.try_send(Vec::with_capacity(BUFFER_BYTES));
            }
            senders.push(tx);
            spares.push(rx);
        }
        returns.push(senders);
        ends.push(WorkerEnds {
            to_writer: to_writer.clone(),
            spares,
        });
    }
    drop(to_writer);
    let handle = std::thread::Builder::new()
        .name("ringlb-logs".into())
        .spawn(move || run(targets, files, from_workers, returns))?;
    Ok((ends, handle))
}

fn run(
    targets: Vec<Target>,
    mut files: Vec<Option<File>>,
    from_workers: Receiver<Batch>,
    returns: Vec<Vec<SyncSender<Vec<u8>>>>,
) {
    loop {
        if REOPEN.swap(false, Ordering::AcqRel) {
            for (t, f) in targets.iter().zip(files.iter_mut()) {
                match t.open() {
                    Ok(new) => *f = new,
                    Err(e) => crate::error!("access log {t:?}: cannot reopen: {e}"),
                }
            }
            crate::info!("access logs reopened");
        }
        let batch = match from_workers.recv_timeout(Duration::from_millis(100)) {
            Ok(b) => b,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            // Every worker is gone: the process is ending.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let written = match &mut files[batch.file] {
            Some(f) => f.write_all(&batch.bytes),
            None => std::io::stdout().lock().write_all(&batch.bytes),
        };
        if let Err(e) = written {
            crate::log::rate_limited(format_args!(
                "access log {:?}: write failed: {e}",
                targets[batch.file]
            ));
        }
        let mut bytes = batch.bytes;
        bytes.clear();
        let _ = returns[batch.worker][batch.file].try_send(bytes);
    }
}
