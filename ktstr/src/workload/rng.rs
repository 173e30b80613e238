//! A tiny xorshift64 generator: workers need cheap, seedable randomness (CPU picks, page
//! picks, reservoir slots) without pulling a PRNG crate into every forked process.

/// xorshift64 (Marsaglia). Not for anything that needs statistical quality.
#[derive(Debug, Clone, Copy)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// Seeds the generator (a zero seed is replaced: xorshift would stay at zero).
    pub fn new(seed: u64) -> Self {
        XorShift64(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Seeds from a constant mixed with this process's PID, so forked workers differ.
    pub fn per_process(salt: u64) -> Self {
        Self::new(salt ^ std::process::id() as u64)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let mut a = XorShift64::new(42);
        let mut b = XorShift64::new(42);
        for _ in 0..100 {
            let x = a.below(7);
            assert_eq!(x, b.below(7));
            assert!(x < 7);
        }
        assert_ne!(XorShift64::new(0).next_u64(), 0);
    }
}
