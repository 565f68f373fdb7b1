//! Smooth weighted round robin (nginx): every pick adds each available server's
//! weight to its current weight, takes the largest, and subtracts the total from
//! it. Weights 5,1,1 give a a b a c a a, not a a a a a b c.
//!
//! The sequence only depends on the weights and the available set, so it is
//! computed once per (generation, weights) and replayed: a pick is then a table
//! lookup. While weights move (slow start), picks run the O(n) step directly.

use super::Servers;

/// Longest precomputed sequence (sum of reduced weights); longer runs step live.
const MAX_SCHEDULE: usize = 1 << 16;

pub struct SmoothWeighted {
    current: Vec<i64>,
    schedule: Vec<u16>,
    cursor: usize,
    /// Generation the schedule was built for.
    built_for: Option<(u64, u64)>,
}

impl SmoothWeighted {
    pub fn new(n: usize) -> SmoothWeighted {
        SmoothWeighted {
            current: vec![0; n],
            schedule: Vec::new(),
            cursor: 0,
            built_for: None,
        }
    }

    /// One step of nginx's algorithm over the live state.
    #[inline]
    fn step<S: Servers>(
        current: &mut [i64],
        s: &S,
        weights: impl Fn(usize) -> i64,
    ) -> Option<usize> {
        let mut total = 0i64;
        let mut best = usize::MAX;
        let mut best_value = i64::MIN;
        for (i, c) in current.iter_mut().enumerate().take(s.len()) {
            if !s.available(i) {
                continue;
            }
            let w = weights(i);
            *c += w;
            total += w;
            if *c > best_value {
                best_value = *c;
                best = i;
            }
        }
        if best == usize::MAX {
            return None;
        }
        current[best] -= total;
        Some(best)
    }

    fn rebuild<S: Servers>(&mut self, s: &S, key: (u64, u64)) {
        self.built_for = Some(key);
        self.schedule.clear();
        self.cursor = 0;
        let n = s.len().min(self.current.len());
        let g = (0..n)
            .filter(|&i| s.available(i))
            .map(|i| u64::from(s.weight(i).max(1)))
            .fold(0, gcd);
        if g == 0 {
            return;
        }
        let reduced = |i: usize| (u64::from(s.weight(i).max(1)) / g) as i64;
        let period: u64 = (0..n)
            .filter(|&i| s.available(i))
            .map(|i| reduced(i) as u64)
            .sum();
        if period as usize > MAX_SCHEDULE {
            return;
        }
        let mut current = vec![0i64; n];
        for _ in 0..period {
            if let Some(i) = Self::step(&mut current, s, reduced) {
                self.schedule.push(i as u16);
            }
        }
    }

    #[inline]
    pub fn pick<S: Servers>(&mut self, s: &S) -> Option<usize> {
        if s.weights_changing() {
            self.built_for = None;
            return Self::step(&mut self.current, s, |i| i64::from(s.weight(i).max(1)));
        }
        let key = (s.generation(), 0);
        if self.built_for != Some(key) {
            self.rebuild(s, key);
        }
        if !self.schedule.is_empty() {
            let i = self.schedule[self.cursor] as usize;
            self.cursor += 1;
            if self.cursor == self.schedule.len() {
                self.cursor = 0;
            }
            if s.available(i) {
                return Some(i);
            }
        }
        Self::step(&mut self.current, s, |i| i64::from(s.weight(i).max(1)))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Table;
    use super::*;

    #[test]
    fn ratios_follow_weights_smoothly() {
        let mut t = Table::new(3);
        t.weights = vec![5, 1, 1];
        let mut b = SmoothWeighted::new(3);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&t).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        t.weights = vec![3, 2, 5];
        t.generation.set(1);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[b.pick(&t).unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip([3, 2, 5]) {
            let expected = 10_000 * w / 10;
            assert!(c.abs_diff(expected) <= expected / 50, "{counts:?}");
        }
    }

    #[test]
    fn unavailable_servers_get_nothing() {
        let mut t = Table::new(3);
        t.up[0] = false;
        let mut b = SmoothWeighted::new(3);
        for _ in 0..100 {
            assert_ne!(b.pick(&t), Some(0));
        }
        // Availability changes without a generation bump still never route to a down server.
        t.up[0] = true;
        for _ in 0..10 {
            b.pick(&t);
        }
        t.up[1] = false;
        for _ in 0..100 {
            assert_ne!(b.pick(&t), Some(1));
        }
    }

    #[test]
    fn moving_weights_step_live() {
        let mut t = Table::new(2);
        t.changing = true;
        let mut b = SmoothWeighted::new(2);
        let mut counts = [0u32; 2];
        for k in 0..1000u32 {
            t.weights = vec![100, 10 + k / 10];
            counts[b.pick(&t).unwrap()] += 1;
        }
        assert!(counts[1] > 200 && counts[1] < 450, "{counts:?}");
    }
}
