//! Choosing a server. Algorithms sit behind `Balancer` so that later ones
//! (weighted, least in-flight, EWMA, hashing) plug in without touching the proxy.
//! State is per worker: each worker rotates independently.

use std::cell::Cell;

pub trait Balancer {
    /// Index of the server to use among `n`, or None when `n == 0`.
    fn pick(&self, n: usize) -> Option<usize>;
}

/// Plain round robin.
#[derive(Default)]
pub struct RoundRobin {
    next: Cell<usize>,
}

impl Balancer for RoundRobin {
    #[inline]
    fn pick(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let i = self.next.get() % n;
        self.next.set(i + 1);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_is_even() {
        let rr = RoundRobin::default();
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[rr.pick(3).unwrap()] += 1;
        }
        assert_eq!(counts, [1000, 1000, 1000]);
        assert_eq!(rr.pick(0), None);
    }
}
