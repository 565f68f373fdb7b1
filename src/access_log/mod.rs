//! Access logs: one line per request, per listener, in the `combined` format
//! (Apache/nginx) or as JSON, without blocking the event loop.
//!
//! Each worker formats lines into a buffer of its own per log file (no lock,
//! no system call per request). A full buffer, or one holding lines older
//! than `FLUSH_AFTER`, is handed to the process's log writer thread over a
//! bounded channel; the writer appends it to the file with one `write(2)`
//! (`O_APPEND`, so workers' whole buffers never interleave inside a line) and
//! sends the emptied buffer back for reuse. When the writer falls behind and
//! every buffer of a worker is in flight, new lines are dropped and counted
//! (`ringlb_access_log_dropped_lines_total`) rather than stalling requests.
//! SIGUSR1 makes the writer reopen its files (after logrotate moved them).
//! A path of `-` or `stdout` writes to standard output.
//!
//! Steady state allocates nothing: buffers cycle between the worker and the
//! writer, and the fields a line needs from the request head are copied, when
//! the head is parsed, into a small buffer taken from a per-worker free list.

pub mod format;
pub mod writer;

pub use format::{Capture, Format};

use std::cell::RefCell;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

/// Buffers a worker has per log file (one filling, the rest in flight).
pub const BUFFERS_PER_FILE: usize = 4;
/// Size of one buffer; a full one is handed over at once.
pub const BUFFER_BYTES: usize = 64 * 1024;
/// Longest a line waits in a worker's buffer, in milliseconds.
pub const FLUSH_AFTER_MS: u64 = 200;

/// A batch of whole lines for one file, from one worker.
pub struct Batch {
    pub file: usize,
    pub worker: usize,
    pub bytes: Vec<u8>,
}

/// One log file as a worker sees it.
struct FileBuffer {
    filling: Vec<u8>,
    /// When the oldest line in `filling` was written (coarse clock, ms).
    since_ms: u64,
    /// Empty buffers the writer sent back.
    spare: Receiver<Vec<u8>>,
}

/// A worker's side of the access logs.
pub struct WorkerLog {
    worker: usize,
    files: RefCell<Vec<FileBuffer>>,
    /// None once closed (the writer ends when every worker has closed).
    to_writer: RefCell<Option<SyncSender<Batch>>>,
}

/// Counts lines dropped because the writer fell behind (this worker's cell).
fn dropped(lines: u64) {
    if let Some(m) = crate::metrics::current() {
        m.access_log_dropped.add(lines);
    }
}

impl WorkerLog {
    /// `spares`: per file, the channel on which the writer returns this
    /// worker's buffers.
    pub fn new(worker: usize, ends: writer::WorkerEnds) -> WorkerLog {
        let writer::WorkerEnds { to_writer, spares } = ends;
        let files = spares
            .into_iter()
            .map(|spare| FileBuffer {
                filling: Vec::with_capacity(BUFFER_BYTES),
                since_ms: 0,
                spare,
            })
            .collect();
        WorkerLog {
            worker,
            files: RefCell::new(files),
            to_writer: RefCell::new(Some(to_writer)),
        }
    }

    /// Appends one line, written by `write` (at most `format::LONGEST_LINE`
    /// bytes) into the file's buffer.
    pub fn line(&self, file: usize, now_ms: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let mut files = self.files.borrow_mut();
        let f = &mut files[file];
        if f.filling.capacity() - f.filling.len() < format::LONGEST_LINE {
            if !f.filling.is_empty() {
                self.hand_over(file, f);
            }
            if f.filling.capacity() < format::LONGEST_LINE {
                // Every buffer is with the writer: take one back if it is done.
                match f.spare.try_recv() {
                    Ok(b) => f.filling = b,
                    Err(_) => {
                        dropped(1);
                        return;
                    }
                }
            }
        }
        if f.filling.is_empty() {
            f.since_ms = now_ms;
        }
        write(&mut f.filling);
    }

    /// Hands buffers holding lines older than `FLUSH_AFTER_MS` to the writer
    /// (the worker's housekeeping calls it a few times a second).
    pub fn flush_due(&self, now_ms: u64) {
        let mut files = self.files.borrow_mut();
        for (i, f) in files.iter_mut().enumerate() {
            if !f.filling.is_empty() && now_ms.saturating_sub(f.since_ms) >= FLUSH_AFTER_MS {
                self.hand_over(i, f);
            }
        }
    }

    /// Hands every buffer with lines to the writer, then lets go of it: the
    /// last worker to close ends the writer (shutdown).
    pub fn close(&self) {
        let mut files = self.files.borrow_mut();
        for (i, f) in files.iter_mut().enumerate() {
            if !f.filling.is_empty() {
                self.hand_over(i, f);
            }
        }
        self.to_writer.borrow_mut().take();
    }

    fn hand_over(&self, file: usize, f: &mut FileBuffer) {
        let next = f.spare.try_recv().unwrap_or_default();
        let bytes = std::mem::replace(&mut f.filling, next);
        let batch = Batch {
            file,
            worker: self.worker,
            bytes,
        };
        let sent = match &*self.to_writer.borrow() {
            Some(to) => to.try_send(batch),
            None => Err(TrySendError::Disconnected(batch)),
        };
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                // The writer is behind: these lines are lost, the buffer kept.
                let lines = b.bytes.iter().filter(|&&c| c == b'\n').count();
                dropped(lines as u64);
                let mut bytes = b.bytes;
                bytes.clear();
                if f.filling.capacity() == 0 {
                    f.filling = bytes;
                }
            }
        }
    }
}
