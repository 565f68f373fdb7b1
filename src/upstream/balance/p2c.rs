//! Power of two choices: sample two distinct available servers at random and
//! take the one with the lower score (in-flight, or peak-EWMA cost).

use super::{Servers, XorShift};

pub struct PowerOfTwo {
    rng: XorShift,
}

impl PowerOfTwo {
    pub fn new(seed: u64) -> PowerOfTwo {
        PowerOfTwo {
            rng: XorShift::new(seed),
        }
    }

    #[inline]
    pub fn pick<S: Servers>(&mut self, s: &S, score: impl Fn(&S, usize) -> f64) -> Option<usize> {
        let n = s.len();
        if n == 0 {
            return None;
        }
        // A few random draws find two available servers quickly when most are up;
        // fall back to a scan when many are down.
        let mut a = None;
        let mut b = None;
        for _ in 0..4 {
            let i = self.rng.below(n);
            if !s.available(i) {
                continue;
            }
            match a {
                None => a = Some(i),
                Some(x) if x != i => {
                    b = Some(i);
                    break;
                }
                _ => {}
            }
        }
        if b.is_none() {
            let offset = self.rng.below(n);
            for k in 0..n {
                let i = (offset + k) % n;
                if s.available(i) && Some(i) != a {
                    if a.is_none() {
                        a = Some(i);
                    } else {
                        b = Some(i);
                        break;
                    }
                }
            }
        }
        match (a, b) {
            (Some(x), Some(y)) => Some(if score(s, y) < score(s, x) { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Table;
    use super::*;

    #[test]
    fn never_picks_the_busiest_of_two_and_spreads() {
        let mut t = Table::new(2);
        t.inflight = vec![10, 0];
        let mut b = PowerOfTwo::new(7);
        for _ in 0..100 {
            assert_eq!(b.pick(&t, |s, i| f64::from(s.inflight(i))), Some(1));
        }
        let t = Table::new(8);
        let mut counts = [0u32; 8];
        for _ in 0..8000 {
            counts[b.pick(&t, |s, i| f64::from(s.inflight(i))).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn works_with_one_or_no_available_server() {
        let mut t = Table::new(4);
        t.up = vec![false, false, true, false];
        let mut b = PowerOfTwo::new(1);
        for _ in 0..50 {
            assert_eq!(b.pick(&t, |_, _| 0.0), Some(2));
        }
        t.up[2] = false;
        assert_eq!(b.pick(&t, |_, _| 0.0), None);
    }
}
