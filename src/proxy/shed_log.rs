//! Logging load shedding once per burst: the first shed request or
//! connection of a burst logs which limit fired; the burst's end (a second
//! without any) logs how many were shed, by reason. Between the two, shedding
//! costs a counter, never a log line.

use crate::error::Shed;
use std::cell::Cell;

/// Quiet time that ends a burst, in milliseconds.
const BURST_GAP_MS: u64 = 1000;

#[derive(Default)]
pub struct ShedLog {
    /// When the burst's last shed happened (coarse ms); None: no burst.
    last_ms: Cell<Option<u64>>,
    counts: [Cell<u64>; Shed::ALL.len()],
}

impl ShedLog {
    /// Notes one shed request or connection; `what` says where (an upstream
    /// or a listener) for the burst's first line.
    pub fn shed(&self, why: Shed, what: std::fmt::Arguments<'_>) {
        let now = crate::deadline::now_ms();
        if self.last_ms.get().is_none() {
            crate::warn!(
                "shedding load: {what}: {} (503 until the burst ends)",
                why.label()
            );
        }
        self.last_ms.set(Some(now));
        let c = &self.counts[why as usize];
        c.set(c.get() + 1);
    }

    /// Called by the worker's housekeeping: logs the end of a burst.
    pub fn tick(&self, worker: usize, now_ms: u64) {
        let Some(last) = self.last_ms.get() else {
            return;
        };
        if now_ms.saturating_sub(last) < BURST_GAP_MS {
            return;
        }
        self.last_ms.set(None);
        let mut parts = String::new();
        let mut total = 0;
        for why in Shed::ALL {
            let n = self.counts[why as usize].replace(0);
            if n > 0 {
                total += n;
                parts.push_str(&format!(" {}={n}", why.label()));
            }
        }
        crate::info!(
            "worker {worker}: load shedding ended: {total} shed ({})",
            parts.trim()
        );
    }
}
