//! What the seeded simulations share: their random numbers and their counters.
#![allow(dead_code)] // each simulation uses its own part of it

/// splitmix64: tiny, seedable, and the same sequence on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn below64(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn per_mille(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// The simulated clients' records: counters named by number.
pub fn key_name(index: usize) -> Vec<u8> {
    format!("counter-{index}").into_bytes()
}

/// A counter's value from a record's data (little endian, absent bytes zero).
pub fn counter_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
    u64::from_le_bytes(bytes)
}
