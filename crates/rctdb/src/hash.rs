//! tdb's Jenkins hash (`tdb_jenkins_hash`: Bob Jenkins' lookup3 `hashlittle`, initval 0),
//! in pure Rust so the protocol engine can place keys without touching libtdb. It must
//! agree with libtdb bit for bit: the LMASTER of a key is `vnn_map[hash % len]` on every node.

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Little-endian word from up to four bytes; missing bytes count as zero.
#[inline]
fn word(bytes: &[u8]) -> u32 {
    bytes.iter().enumerate().fold(0u32, |w, (i, &byte)| w | (byte as u32) << (8 * i))
}

pub fn jenkins_hash(key: &[u8]) -> u32 {
    let init = 0xdead_beefu32.wrapping_add(key.len() as u32);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]));
    }
    finish(&mut a, &mut b, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_is_the_initial_value() {
        assert_eq!(jenkins_hash(b""), 0xdead_beef);
    }

    #[test]
    fn agrees_with_libtdb_bit_for_bit() {
        let mut key = vec![];
        for i in 0..300u32 {
            assert_eq!(jenkins_hash(&key), crate::local::jenkins_hash(&key), "key of {} bytes", key.len());
            key.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
        }
    }

    #[test]
    fn differs_on_every_tail_length() {
        let key = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let hashes: std::collections::HashSet<u32> =
            (0..=key.len()).map(|n| jenkins_hash(&key[..n])).collect();
        assert_eq!(hashes.len(), key.len() + 1);
    }
}
