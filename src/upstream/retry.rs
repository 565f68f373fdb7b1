//! Retry budget, per worker: every request earns `ratio` of a retry token, each
//! retry spends one, and the bucket holds at most `burst` tokens. Over any
//! stretch of traffic, retries stay below `burst + ratio x requests`, so a sick
//! fleet is not hit by a retry storm.

#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    burst: f64,
    tokens: f64,
}

impl RetryBudget {
    pub fn new(ratio: f64, burst: u32) -> RetryBudget {
        RetryBudget {
            ratio,
            burst: f64::from(burst),
            tokens: f64::from(burst),
        }
    }

    #[inline]
    pub fn on_request(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(self.burst);
    }

    /// Takes a token for one retry if there is one.
    #[inline]
    pub fn try_retry(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_retries_to_ratio_plus_burst() {
        let mut b = RetryBudget::new(0.2, 10);
        let mut retries = 0;
        for _ in 0..1000 {
            b.on_request();
            // every request wants 3 retries
            for _ in 0..3 {
                if b.try_retry() {
                    retries += 1;
                }
            }
        }
        assert!(retries <= 10 + 200, "{retries}");
        assert!(retries >= 200, "{retries}");
    }
}
