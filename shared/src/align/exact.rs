//! An exact sum of floating-point values: a fixed-point accumulator wide
//! enough for every `f32` and every square of one, so adding is integer
//! addition. Integer addition does not care about order, which is what makes
//! the fleet's merged statistics equal, bit for bit, those of the pooled
//! data, however the rows are split over vehicles.

use serde::{Deserialize, Serialize};

/// 64-bit limbs: 640 bits with the least significant at 2^-[`OFFSET`].
const LIMBS: usize = 10;
/// Place of the lowest bit: below the smallest square of an `f32` (2^-298,
/// normalised in an `f64` to at least 2^-303).
const OFFSET: i32 = 320;

/// The exact sum of the `f64` values added to it (every `f32` and the square
/// of every `f32` fits; bits below 2^-320 are dropped per value and bits
/// above 2^320 are lost, neither of which any `f32` input reaches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExactSum {
    positive: [u64; LIMBS],
    negative: [u64; LIMBS],
}

impl ExactSum {
    /// Adds `x`; non-finite values are ignored (callers count them as missing).
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() || x == 0.0 {
            return;
        }
        let bits = x.to_bits();
        let biased = ((bits >> 52) & 0x7ff) as i32;
        let fraction = bits & ((1 << 52) - 1);
        // x = mantissa * 2^exponent
        let (mantissa, exponent) = if biased == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1 << 52), biased - 1075)
        };
        let limbs = if x < 0.0 {
            &mut self.negative
        } else {
            &mut self.positive
        };
        add_shifted(limbs, mantissa, exponent + OFFSET);
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &ExactSum) {
        add_limbs(&mut self.positive, &other.positive);
        add_limbs(&mut self.negative, &other.negative);
    }

    /// The sum, rounded to an `f64` (the same sum always rounds the same way).
    pub fn value(&self) -> f64 {
        // subtract exactly first, so cancellation loses nothing
        if less(&self.positive, &self.negative) {
            -to_f64(&difference(&self.negative, &self.positive))
        } else {
            to_f64(&difference(&self.positive, &self.negative))
        }
    }
}

fn add_shifted(limbs: &mut [u64; LIMBS], mut mantissa: u64, mut shift: i32) {
    if shift < 0 {
        mantissa = if shift <= -64 { 0 } else { mantissa >> -shift };
        shift = 0;
    }
    let (index, bit) = ((shift / 64) as usize, (shift % 64) as u32);
    let wide = (mantissa as u128) << bit;
    carry_in(limbs, index, wide as u64);
    carry_in(limbs, index + 1, (wide >> 64) as u64);
}

fn carry_in(limbs: &mut [u64; LIMBS], mut index: usize, mut value: u64) {
    while value != 0 && index < LIMBS {
        let (sum, carried) = limbs[index].overflowing_add(value);
        limbs[index] = sum;
        value = u64::from(carried);
        index += 1;
    }
}

fn add_limbs(into: &mut [u64; LIMBS], from: &[u64; LIMBS]) {
    let mut carry = false;
    for (a, b) in into.iter_mut().zip(from) {
        let (s1, c1) = a.overflowing_add(*b);
        let (s2, c2) = s1.overflowing_add(u64::from(carry));
        *a = s2;
        carry = c1 || c2;
    }
}

fn less(a: &[u64; LIMBS], b: &[u64; LIMBS]) -> bool {
    a.iter().rev().lt(b.iter().rev())
}

/// `a - b` for `a >= b`.
fn difference(a: &[u64; LIMBS], b: &[u64; LIMBS]) -> [u64; LIMBS] {
    let mut out = [0; LIMBS];
    let mut borrow = false;
    for i in 0..LIMBS {
        let (d1, b1) = a[i].overflowing_sub(b[i]);
        let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
        out[i] = d2;
        borrow = b1 || b2;
    }
    out
}

fn to_f64(limbs: &[u64; LIMBS]) -> f64 {
    let Some(top) = limbs.iter().rposition(|l| *l != 0) else {
        return 0.0;
    };
    let high = limbs[top] as f64;
    let low = if top > 0 { limbs[top - 1] as f64 } else { 0.0 };
    let scale = 64 * top as i32 - OFFSET;
    (high + low * 2f64.powi(-64)) * 2f64.powi(scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sums_small_and_large_exactly() {
        let mut s = ExactSum::default();
        for x in [1e30, 1.0, -1e30, 0.5, f64::NAN] {
            s.add(x);
        }
        // a naive f64 sum loses the 1.0 against 1e30
        assert_eq!(s.value(), 1.5);
        let mut n = ExactSum::default();
        n.add(-2.0);
        n.add(0.5);
        assert_eq!(n.value(), -1.5);
        let tiny = f32::from_bits(1) as f64; // smallest subnormal f32
        let mut t = ExactSum::default();
        t.add(tiny * tiny);
        assert!(t.value() > 0.0);
    }

    proptest! {
        #[test]
        fn order_and_split_do_not_matter(values in prop::collection::vec(-1e6f32..1e6, 0..200), cut in 0usize..200) {
            let mut whole = ExactSum::default();
            let mut squares = ExactSum::default();
            for v in &values {
                whole.add(*v as f64);
                squares.add((*v as f64) * (*v as f64));
            }
            let cut = cut.min(values.len());
            let (mut a, mut b) = (ExactSum::default(), ExactSum::default());
            let (mut a2, mut b2) = (ExactSum::default(), ExactSum::default());
            for v in values[..cut].iter().rev() {
                a.add(*v as f64);
                a2.add((*v as f64) * (*v as f64));
            }
            for v in &values[cut..] {
                b.add(*v as f64);
                b2.add((*v as f64) * (*v as f64));
            }
            b.merge(&a);
            b2.merge(&a2);
            prop_assert_eq!(b, whole);
            prop_assert_eq!(b2, squares);
            let naive: f64 = values.iter().map(|v| *v as f64).sum();
            prop_assert!((whole.value() - naive).abs() <= 1e-6 * (1.0 + naive.abs()));
        }
    }
}
