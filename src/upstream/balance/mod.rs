//! Choosing a server: round robin, smooth weighted round robin (nginx), least
//! in-flight, power of two choices, peak-EWMA latency (linkerd/Finagle) and
//! Maglev consistent hashing. Each algorithm is a small pure unit over the
//! `Servers` view; `Balancer` dispatches without dynamic calls.
//!
//! All balancer state is per worker (each worker balances its own traffic);
//! health that must be shared arrives through `Servers::available`.

mod ewma;
mod least;
mod maglev;
mod p2c;
mod rng;
mod round_robin;
mod swrr;

pub use ewma::PeakEwma;
pub use maglev::{hash_bytes as maglev_hash, Maglev};
pub use rng::XorShift;

/// What a balancer may know about the servers of one pool.
pub trait Servers {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Healthy and not ejected.
    fn available(&self, i: usize) -> bool;
    /// Effective weight (configured weight, ramped by slow start); >= 1 when available.
    fn weight(&self, i: usize) -> u32;
    /// Requests in flight from this worker.
    fn inflight(&self, i: usize) -> u32;
    /// Peak-EWMA cost: latency estimate x (in-flight + 1).
    fn cost(&self, i: usize) -> f64;
    /// Changes whenever the set of available servers (or a static weight) may
    /// have changed.
    fn generation(&self) -> u64;
    /// True while some weight moves on its own (slow start ramping).
    fn weights_changing(&self) -> bool {
        false
    }
    /// Stable identity of server `i` for consistent hashing.
    fn identity(&self, i: usize) -> u64;
}

/// Which algorithm, as named in the config (`balance = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastInflight,
    PowerOfTwo,
    PeakEwma,
    Maglev,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "round_robin" => Algorithm::RoundRobin,
            "weighted_round_robin" => Algorithm::WeightedRoundRobin,
            "least_inflight" => Algorithm::LeastInflight,
            "p2c" => Algorithm::PowerOfTwo,
            "peak_ewma" => Algorithm::PeakEwma,
            "maglev" => Algorithm::Maglev,
            _ => return None,
        })
    }

    pub const NAMES: &'static str =
        "\"round_robin\", \"weighted_round_robin\", \"least_inflight\", \"p2c\", \"peak_ewma\", \"maglev\"";
}

/// A worker's balancer for one pool.
pub enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    Weighted(swrr::SmoothWeighted),
    LeastInflight(least::LeastInflight),
    PowerOfTwo(p2c::PowerOfTwo),
    PeakEwma(p2c::PowerOfTwo),
    Maglev(Maglev),
}

impl Balancer {
    pub fn new(algorithm: Algorithm, servers: usize, seed: u64) -> Balancer {
        match algorithm {
            Algorithm::RoundRobin => {
                Balancer::RoundRobin(round_robin::RoundRobin::new(seed as usize))
            }
            Algorithm::WeightedRoundRobin => Balancer::Weighted(swrr::SmoothWeighted::new(servers)),
            Algorithm::LeastInflight => Balancer::LeastInflight(least::LeastInflight::default()),
            Algorithm::PowerOfTwo => Balancer::PowerOfTwo(p2c::PowerOfTwo::new(seed)),
            Algorithm::PeakEwma => Balancer::PeakEwma(p2c::PowerOfTwo::new(seed)),
            Algorithm::Maglev => Balancer::Maglev(Maglev::new(maglev::DEFAULT_TABLE_SIZE)),
        }
    }

    /// Index of the chosen server, or None when no server is available.
    /// `key` is the request's hash key (used by Maglev only).
    #[inline]
    pub fn pick<S: Servers>(&mut self, s: &S, key: u64) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(s),
            Balancer::Weighted(b) => b.pick(s),
            Balancer::LeastInflight(b) => b.pick(s),
            Balancer::PowerOfTwo(b) => b.pick(s, |s, i| {
                f64::from(s.inflight(i)) / f64::from(s.weight(i).max(1))
            }),
            Balancer::PeakEwma(b) => b.pick(s, |s, i| s.cost(i) / f64::from(s.weight(i).max(1))),
            Balancer::Maglev(b) => b.pick(s, key),
        }
    }
}

/// A plain server table, for algorithm tests and benches.
#[doc(hidden)]
pub mod testing {
    use super::Servers;
    use std::cell::Cell;

    pub struct Table {
        pub up: Vec<bool>,
        pub weights: Vec<u32>,
        pub inflight: Vec<u32>,
        pub costs: Vec<f64>,
        pub generation: Cell<u64>,
        pub changing: bool,
    }

    impl Table {
        pub fn new(n: usize) -> Table {
            Table {
                up: vec![true; n],
                weights: vec![1; n],
                inflight: vec![0; n],
                costs: vec![1.0; n],
                generation: Cell::new(0),
                changing: false,
            }
        }
    }

    impl Servers for Table {
        fn len(&self) -> usize {
            self.up.len()
        }
        fn available(&self, i: usize) -> bool {
            self.up[i]
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn inflight(&self, i: usize) -> u32 {
            self.inflight[i]
        }
        fn cost(&self, i: usize) -> f64 {
            self.costs[i]
        }
        fn generation(&self) -> u64 {
            self.generation.get()
        }
        fn identity(&self, i: usize) -> u64 {
            (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }
        fn weights_changing(&self) -> bool {
            self.changing
        }
    }
}
