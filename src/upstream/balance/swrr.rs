//! Smooth weighted round robin (nginx): every pick adds each available server's
//! weight to its current weight, takes the largest, and subtracts the total from
//! it. Weights 5,1,1 give a a b a c a a, not a a a a a b c.

use super::Servers;

pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(n: usize) -> SmoothWeighted {
        SmoothWeighted {
            current: vec![0; n],
        }
    }

    #[inline]
    pub fn pick<S: Servers>(&mut self, s: &S) -> Option<usize> {
        let mut total = 0i64;
        let mut best = usize::MAX;
        let mut best_value = i64::MIN;
        for (i, current) in self.current.iter_mut().enumerate().take(s.len()) {
            if !s.available(i) {
                continue;
            }
            let w = i64::from(s.weight(i).max(1));
            *current += w;
            total += w;
            if *current > best_value {
                best_value = *current;
                best = i;
            }
        }
        if best == usize::MAX {
            return None;
        }
        self.current[best] -= total;
        Some(best)
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
    }
}
