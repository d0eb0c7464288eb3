//! Internet checksums (RFC 1071) and their incremental update (RFC 1624).
//!
//! The send path changes a few header fields of every replayed packet (destination address,
//! ack number, window, timestamps); updating the checksum from the old and new field values
//! costs a handful of operations instead of a pass over the whole segment.

/// One's-complement sum of `data` (odd trailing byte padded with zero) added to `acc`, not
/// yet folded: only its [`fold`] is meaningful.
#[inline]
pub fn sum_bytes(data: &[u8], acc: u64) -> u64 {
    // The sum is taken over native-endian 16-bit words and byte-swapped once at the end
    // (RFC 1071 2.(B): the one's-complement sum is byte-order independent): no swap per word.
    let native = fold(sum_native(data));
    let be = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    acc + u64::from(be)
}

/// Native-endian 16-bit words summed into 32-bit lanes, which cannot overflow within a block
/// of 64 KiB (32768 words of at most 0xffff): 8 (16 with AVX2) words per vector instruction.
/// Every captured segment is verified in full, so this loop is most of the per-packet cost.
/// (Summing 32-bit words and their high halves instead, with AVX2 intrinsics, avoids the
/// zero-extending shuffles but measured no faster here: the unaligned loads dominate.)
#[inline(always)]
fn sum_native_portable(data: &[u8]) -> u64 {
    let mut total = 0u64;
    for block in data.chunks(1 << 16) {
        let mut words = block.chunks_exact(2);
        let s = (&mut words)
            .map(|w| u32::from(u16::from_ne_bytes([w[0], w[1]])))
            .fold(0u32, u32::wrapping_add);
        total += u64::from(s);
        if let [last] = words.remainder() {
            total += u64::from(u16::from_ne_bytes([*last, 0]));
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_native_avx2(data: &[u8]) -> u64 {
    sum_native_portable(data)
}

#[inline]
fn sum_native(data: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { sum_native_avx2(data) };
        }
    }
    sum_native_portable(data)
}

/// Folds a sum into 16 bits (end-around carry).
#[inline]
pub fn fold(acc: u64) -> u16 {
    // A fixed number of steps, no loop: at most 2^33 - 2 after the first, 0x2fffe after the
    // second, 0x10001 after the third, 16 bits after the fourth.
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum (complement of the folded sum) of `data`.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(data, 0))
}

/// Sum of the TCP/UDP pseudo-header (source, destination, zero, protocol, length).
#[inline]
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u64 {
    u64::from(u16::from_be_bytes([src[0], src[1]]))
        + u64::from(u16::from_be_bytes([src[2], src[3]]))
        + u64::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u64::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u64::from(protocol)
        + u64::from(len)
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit field changed from `old` to `new`.
#[inline]
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!csum) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// The new checksum after a 32-bit field (two 16-bit words) changed.
#[inline]
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!csum)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from((new >> 16) as u16)
        + u64::from(new as u16);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The example words of RFC 1071 section 3: sum 0xddf2, checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_bytes(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), 0x220d);
    }

    #[test]
    fn word_sum_matches_the_rfc_1071_definition() {
        // The plain definition: 16-bit big-endian words, end-around carry.
        fn naive(data: &[u8]) -> u16 {
            let mut acc = 0u32;
            for c in data.chunks(2) {
                acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
                acc = (acc & 0xffff) + (acc >> 16);
            }
            !(acc as u16)
        }
        let mut x = 0x1234_5678u32;
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert_eq!(checksum(&data), naive(&data), "length {len}");
        }
        assert_eq!(checksum(&[0xff; 1500]), naive(&[0xff; 1500]));
        // Past one 64 KiB block of 32-bit lanes, odd length; and the portable loop alone
        // (what runs without AVX2).
        let big: Vec<u8> = (0..200_001u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(checksum(&big), naive(&big));
        assert_eq!(checksum(&[0xff; 70_001]), naive(&[0xff; 70_001]));
        for len in [0, 1, 31, 33, 63, 64, 65, 1500, 65_537, 200_001] {
            let d = &big[..len];
            assert_eq!(
                fold(sum_native_portable(d)),
                fold(sum_native(d)),
                "length {len}"
            );
        }
    }

    #[test]
    fn fold_matches_end_around_carry_until_16_bits() {
        fn looped(mut acc: u64) -> u16 {
            while acc >> 16 != 0 {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            acc as u16
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let edges = [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_ffff,
            0x2_fffe,
            0xffff_ffff,
            1 << 32,
        ];
        for v in edges
            .into_iter()
            .chain([u64::MAX, u64::MAX - 1, u64::MAX >> 1])
        {
            assert_eq!(fold(v), looped(v), "{v:#x}");
        }
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for v in [x, x >> 20, x >> 40, x & 0x3_ffff] {
                assert_eq!(fold(v), looped(v), "{v:#x}");
            }
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            checksum(&[0x12, 0x34, 0x56]),
            checksum(&[0x12, 0x34, 0x56, 0x00])
        );
    }

    #[test]
    fn incremental_matches_full() {
        let mut data = [0u8; 40];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let c0 = checksum(&data);
        let old = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let new: u32 = 0xdead_beef;
        data[8..12].copy_from_slice(&new.to_be_bytes());
        assert_eq!(update_u32(c0, old, new), checksum(&data));
        let old16 = u16::from_be_bytes([data[2], data[3]]);
        data[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(
            update_u16(checksum_before(&data, 2, old16), old16, 0xffff),
            checksum(&data)
        );
    }

    fn checksum_before(data: &[u8], at: usize, old: u16) -> u16 {
        let mut copy = data.to_vec();
        copy[at..at + 2].copy_from_slice(&old.to_be_bytes());
        checksum(&copy)
    }
}
