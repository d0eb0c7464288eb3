//! Internet checksums (RFC 1071) and their incremental update (RFC 1624).
//!
//! The send path changes a few header fields of every replayed packet (destination address,
//! ack number, window, timestamps); updating the checksum from the old and new field values
//! costs a handful of operations instead of a pass over the whole segment.

/// One's-complement sum of `data` (odd trailing byte padded with zero) added to `acc`, not
/// yet folded: only its [`fold`] is meaningful.
#[inline]
pub fn sum_bytes(data: &[u8], acc: u64) -> u64 {
    add_native(acc, sum_native(data))
}

/// `acc` plus a sum taken over native-endian words, byte-swapped once (RFC 1071 2.(B): the
/// one's-complement sum is byte-order independent): no swap per word.
#[inline(always)]
fn add_native(acc: u64, native: u64) -> u64 {
    let native = fold(native);
    let be = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    acc + u64::from(be)
}

/// Native-endian 32-bit words summed into eight 64-bit lanes (a 32-bit word is two 16-bit
/// words, and 2^16 = 1 modulo 0xffff: the folded sums are the same), then the tail by
/// 16-bit words. What runs without AVX2; on x86_64 the explicit vector versions below sum
/// 32 or 64 bytes per step. Every captured segment is verified in full, so this sum is a
/// large part of the per-packet cost: 1480 bytes, in one run, 40 to 49 ns with the loop
/// before (16-bit words into 32-bit lanes, left to the compiler's vectoriser under AVX2),
/// 31 to 38 ns with [`sum_native_avx2`]. With [`copy_and_sum`] the copy costs little more.
#[inline(always)]
fn sum_native_portable(data: &[u8]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = [
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ];
            *lane += u64::from(u32::from_ne_bytes(w));
        }
    }
    // At most 2^32 per word: no lane nor their sum overflows below 2^29 bytes.
    let mut total: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(2);
    for w in &mut words {
        total += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        total += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    total
}

/// [`sum_native_portable`] with AVX2: 64-bit lanes, each adding the low and the high half
/// of its 32-bit words apart (a mask and a shift: no widening shuffles, which share one
/// port), 64 bytes a step. No AVX-512: its 512-bit instructions lower the clock of the core
/// on some CPUs, and tcpcopy shares the production host's cores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_native_avx2(data: &[u8]) -> u64 {
    let mut lanes = Lanes::new();
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        // SAFETY: `block` holds 64 bytes; unaligned loads.
        let (v, w) = unsafe { Lanes::load(block) };
        lanes.add(v, w);
    }
    lanes.sum() + sum_native_portable(blocks.remainder())
}

/// The four 64-bit-lane accumulators of the AVX2 sums.
#[cfg(target_arch = "x86_64")]
struct Lanes([std::arch::x86_64::__m256i; 4]);

#[cfg(target_arch = "x86_64")]
impl Lanes {
    #[target_feature(enable = "avx2")]
    #[inline]
    fn new() -> Self {
        Lanes([std::arch::x86_64::_mm256_setzero_si256(); 4])
    }

    /// The two 32-byte halves of `block` (at least 64 bytes long).
    ///
    /// # Safety
    /// `block` must hold at least 64 bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load(block: &[u8]) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        let p = block.as_ptr().cast::<__m256i>();
        // SAFETY: the caller guarantees 64 bytes; unaligned loads.
        unsafe { (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))) }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn add(&mut self, v: std::arch::x86_64::__m256i, w: std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        let low = _mm256_set1_epi64x(0xffff_ffff);
        let [a, b, c, d] = &mut self.0;
        *a = _mm256_add_epi64(*a, _mm256_and_si256(v, low));
        *b = _mm256_add_epi64(*b, _mm256_srli_epi64::<32>(v));
        *c = _mm256_add_epi64(*c, _mm256_and_si256(w, low));
        *d = _mm256_add_epi64(*d, _mm256_srli_epi64::<32>(w));
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn sum(&self) -> u64 {
        use std::arch::x86_64::*;
        let [a, b, c, d] = self.0;
        let v = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
        let mut lanes = [0u64; 4];
        // SAFETY: `lanes` holds 32 bytes; unaligned store.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
        lanes.iter().sum()
    }
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

/// Copies `src` into `dst` (of the same length) and returns what [`sum_bytes`]`(src, acc)`
/// would: the bytes are summed as they pass through the registers, one pass instead of a
/// copy and a sum over the copy.
#[inline]
pub fn copy_and_sum(src: &[u8], dst: &mut [u8], acc: u64) -> u64 {
    assert_eq!(src.len(), dst.len(), "copy_and_sum: lengths differ");
    add_native(acc, copy_sum_native(src, dst))
}

#[inline]
fn copy_sum_native(src: &[u8], dst: &mut [u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if src.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { copy_sum_native_avx2(src, dst) };
        }
    }
    dst.copy_from_slice(src);
    sum_native_portable(src)
}

/// [`copy_sum_native`] with AVX2: each 64 bytes loaded are stored and summed as in
/// [`sum_native_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn copy_sum_native_avx2(src: &[u8], dst: &mut [u8]) -> u64 {
    use std::arch::x86_64::*;
    let n = src.len() / 64 * 64;
    let mut lanes = Lanes::new();
    for (s, d) in src[..n].chunks_exact(64).zip(dst[..n].chunks_exact_mut(64)) {
        // SAFETY: `s` and `d` hold 64 bytes each; unaligned loads and stores.
        let (v, w) = unsafe {
            let (v, w) = Lanes::load(s);
            let q = d.as_mut_ptr().cast::<__m256i>();
            _mm256_storeu_si256(q, v);
            _mm256_storeu_si256(q.add(1), w);
            (v, w)
        };
        lanes.add(v, w);
    }
    dst[n..].copy_from_slice(&src[n..]);
    lanes.sum() + sum_native_portable(&src[n..])
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
    fn every_sum_variant_and_the_copying_sum_agree() {
        // Each vector variant the CPU has, on every length up to past two 256-byte blocks and
        // on large ones, at every alignment of a 64-byte line, random and all-ones bytes (the
        // largest lane sums); the copying sum leaves an identical copy.
        let random: Vec<u8> = (0..200_064u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let ones = vec![0xffu8; 200_064];
        let lengths = (0..600).chain([1479, 1480, 1481, 9000, 65_536, 65_537, 200_000]);
        for len in lengths {
            for offset in [0, 1, 2, 3, 7, 34, 63] {
                for bytes in [&random, &ones] {
                    let d = &bytes[offset..offset + len];
                    let want = fold(sum_native_portable(d));
                    let case = format!("length {len}, offset {offset}");
                    assert_eq!(fold(sum_native(d)), want, "{case}");
                    let mut copy = vec![0u8; len + 1];
                    let acc = 0x1_2345;
                    assert_eq!(
                        copy_and_sum(d, &mut copy[1..], acc),
                        sum_bytes(d, acc),
                        "{case}"
                    );
                    assert_eq!(&copy[1..], d, "{case}");
                    #[cfg(target_arch = "x86_64")]
                    {
                        if std::arch::is_x86_feature_detected!("avx2") {
                            // SAFETY: the CPU has AVX2.
                            assert_eq!(fold(unsafe { sum_native_avx2(d) }), want, "{case}");
                            copy.fill(0);
                            let sum = unsafe { copy_sum_native_avx2(d, &mut copy[1..]) };
                            assert_eq!((fold(sum), &copy[1..]), (want, d), "{case}");
                        }
                    }
                }
            }
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
