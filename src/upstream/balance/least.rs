//! Least in-flight requests (weighted: in-flight / weight), ties broken by
//! rotating the starting point so equal servers share the load.

use super::Servers;

#[derive(Default)]
pub struct LeastInflight {
    start: usize,
    /// `(index, weight)` of the available servers, by index, for `built_for`.
    candidates: Vec<(u32, u32)>,
    built_for: Option<u64>,
}

impl LeastInflight {
    /// Picks the server with the fewest requests in flight per unit of weight.
    ///
    /// Availability and weights are cached per generation (they change only
    /// with health, ejections and slow start), so a pick reads one in-flight
    /// counter per candidate and stops at the first idle one, which is what a
    /// full scan in the same rotation order would choose too.
    #[inline]
    pub fn pick<S: Servers>(&mut self, s: &S) -> Option<usize> {
        if s.weights_changing() || self.built_for != Some(s.generation()) {
            self.rebuild(s);
        }
        match self.scan(s) {
            Some(i) if s.available(i) => Some(i),
            // Availability moved without a generation change: rescan fresh.
            Some(_) => {
                self.rebuild(s);
                self.scan(s)
            }
            None => None,
        }
    }

    fn rebuild<S: Servers>(&mut self, s: &S) {
        self.candidates.clear();
        self.candidates.extend(
            (0..s.len())
                .filter(|&i| s.available(i))
                .map(|i| (i as u32, s.weight(i).max(1))),
        );
        self.built_for = (!s.weights_changing()).then(|| s.generation());
    }

    fn scan<S: Servers>(&mut self, s: &S) -> Option<usize> {
        let c = &self.candidates;
        if c.is_empty() {
            return None;
        }
        // Rotate the starting point so that equal servers take turns.
        let from = c.partition_point(|&(i, _)| (i as usize) < self.start);
        let mut best = Best::default();
        if !best.scan(s, &c[from..]) {
            best.scan(s, &c[..from]);
        }
        let i = best.index?;
        self.start = i + 1;
        Some(i)
    }
}

/// The best candidate so far: inflight/weight is compared by cross-multiplication
/// (no division); `(1, 0)` stands for an infinite ratio before the first candidate.
struct Best {
    index: Option<usize>,
    inflight: u64,
    weight: u64,
}

impl Default for Best {
    fn default() -> Self {
        Best {
            index: None,
            inflight: 1,
            weight: 0,
        }
    }
}

impl Best {
    /// Scans `part` in order; true if it found an idle server (nothing can beat it).
    #[inline]
    fn scan<S: Servers>(&mut self, s: &S, part: &[(u32, u32)]) -> bool {
        for &(i, w) in part {
            let f = u64::from(s.inflight(i as usize));
            if f == 0 {
                self.index = Some(i as usize);
                return true;
            }
            let w = u64::from(w);
            // Branch-free update: which server wins is data, not control flow.
            let take = f * self.weight < self.inflight * w;
            self.index = if take { Some(i as usize) } else { self.index };
            self.inflight = if take { f } else { self.inflight };
            self.weight = if take { w } else { self.weight };
        }
        false
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

    #[test]
    fn weights_scale_the_comparison() {
        let mut t = Table::new(2);
        t.weights = vec![3, 1];
        t.inflight = vec![5, 2]; // 5/3 < 2/1
        let mut b = LeastInflight::default();
        assert_eq!(b.pick(&t), Some(0));
        t.inflight = vec![7, 2]; // 7/3 > 2/1
        assert_eq!(b.pick(&t), Some(1));
    }

    #[test]
    fn never_picks_an_unavailable_server_even_without_a_generation_change() {
        let mut t = Table::new(3);
        t.inflight = vec![3, 3, 3];
        let mut b = LeastInflight::default();
        b.pick(&t);
        t.up[1] = false;
        t.inflight = vec![3, 0, 3];
        for _ in 0..20 {
            assert_ne!(b.pick(&t), Some(1));
        }
        t.up = vec![false; 3];
        t.generation.set(1);
        assert_eq!(b.pick(&t), None);
        t.up = vec![true, false, true];
        t.generation.set(2);
        assert!(matches!(b.pick(&t), Some(0) | Some(2)));
    }

    #[test]
    fn matches_a_full_scan() {
        // Reference: the plain O(n) scan in the same rotation order.
        fn reference(t: &Table, start: usize) -> Option<usize> {
            let n = t.up.len();
            let mut best: Option<(usize, u64, u64)> = None;
            for i in (start..n).chain(0..start) {
                if !t.up[i] {
                    continue;
                }
                let (f, w) = (u64::from(t.inflight[i]), u64::from(t.weights[i].max(1)));
                if best.is_none_or(|(_, bf, bw)| f * bw < bf * w) {
                    best = Some((i, f, w));
                }
            }
            best.map(|b| b.0)
        }
        let mut t = Table::new(16);
        let mut b = LeastInflight::default();
        let mut x = 12345u64;
        for round in 0..2000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t.inflight = (0..16).map(|k| ((x >> (k * 4)) & 7) as u32).collect();
            if round % 100 == 0 {
                t.weights = (0..16).map(|k| 1 + ((x >> k) & 3) as u32).collect();
                t.up = (0..16).map(|k| (x >> (k + 20)) & 7 != 0).collect();
                t.generation.set(round);
            }
            let start = b.start;
            let expected = reference(&t, if start >= 16 { 0 } else { start });
            assert_eq!(b.pick(&t), expected, "round {round}");
        }
    }
}
