//! Least in-flight requests (weighted: in-flight / weight), ties broken by
//! rotating the starting point so equal servers share the load.

use super::Servers;

#[derive(Default)]
pub struct LeastInflight {
    start: usize,
}

impl LeastInflight {
    #[inline]
    pub fn pick<S: Servers>(&mut self, s: &S) -> Option<usize> {
        let n = s.len();
        let start = if self.start >= n { 0 } else { self.start };
        // (index, inflight, weight) of the best so far; inflight/weight is compared
        // by cross-multiplication (no division), scanning from `start` round.
        let mut best: Option<(usize, u64, u64)> = None;
        let mut consider = |i: usize| {
            if !s.available(i) {
                return;
            }
            let (f, w) = (u64::from(s.inflight(i)), u64::from(s.weight(i).max(1)));
            if best.is_none_or(|(_, bf, bw)| f * bw < bf * w) {
                best = Some((i, f, w));
            }
        };
        (start..n).for_each(&mut consider);
        (0..start).for_each(&mut consider);
        // Start after the last choice: equal servers take turns.
        let (i, _, _) = best?;
        self.start = i + 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Table;
    use super::*;

    #[test]
    fn prefers_the_idle_server() {
        let mut t = Table::new(3);
        t.inflight = vec![4, 0, 2];
        let mut b = LeastInflight::default();
        for _ in 0..10 {
            assert_eq!(b.pick(&t), Some(1));
        }
        t.inflight = vec![0, 0, 5];
        let mut counts = [0; 3];
        for _ in 0..100 {
            counts[b.pick(&t).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 50, 0], "ties are shared");
    }
}
