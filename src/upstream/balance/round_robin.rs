//! Plain round robin over available servers.

use super::Servers;

pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// `start` offsets workers so they do not all begin with server 0.
    pub fn new(start: usize) -> RoundRobin {
        RoundRobin { next: start }
    }

    #[inline]
    pub fn pick<S: Servers>(&mut self, s: &S) -> Option<usize> {
        let n = s.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if s.available(i) {
                self.next = i + 1;
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Table;
    use super::*;

    #[test]
    fn even_and_skips_unavailable() {
        let mut t = Table::new(3);
        let mut rr = RoundRobin::new(0);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[rr.pick(&t).unwrap()] += 1;
        }
        assert_eq!(counts, [1000, 1000, 1000]);
        t.up[1] = false;
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[rr.pick(&t).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 0, 500]);
        t.up = vec![false; 3];
        assert_eq!(rr.pick(&t), None);
    }
}
