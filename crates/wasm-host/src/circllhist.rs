//! Envoy's histogram arithmetic (libcircllhist, as Envoy 1.40 links it) for non-negative
//! integer samples: log-linear bins of two significant digits, and the statistics Envoy's admin
//! API prints from them: quantiles (type 1, the sample's expected place within its bin), counts
//! below each Prometheus bucket bound (a bound counts its whole bin) and the approximate sum
//! (each sample at its bin's minimum-error midpoint).
//!
//! Hand-written rather than bound: it is ~100 lines, and the exact float operation order is
//! what makes the printed digits equal Envoy's.

use std::collections::BTreeMap;

/// A bin: the value's two leading digits (`10..=99`) and its power of ten, or the zero bin.
/// Ordered as the values they hold (zero first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Bin {
    exp: i8,
    val: u8,
}

const ZERO: Bin = Bin {
    exp: i8::MIN,
    val: 0,
};

/// Correctly rounded powers of ten (what circllhist's table holds) for the exponents of `u64`.
const POW10: [f64; 20] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19,
];

impl Bin {
    /// The bin of an integer sample (`hist_insert_intscale(h, v, 0, 1)`).
    pub(crate) fn of(v: u64) -> Self {
        if v == 0 {
            return ZERO;
        }
        let (mut value, mut exp) = (v, 1i32);
        if value < 10 {
            value *= 10;
            exp -= 1;
        }
        while value >= 100 {
            value /= 10;
            exp += 1;
        }
        Bin {
            exp: i8::try_from(exp).unwrap_or(i8::MAX),
            val: u8::try_from(value).unwrap_or(99),
        }
    }

    fn pow10(self) -> f64 {
        POW10
            .get(usize::try_from(self.exp).unwrap_or(0))
            .copied()
            .unwrap_or(f64::INFINITY)
    }

    /// Lower edge (`hist_bucket_to_double`).
    fn left(self) -> f64 {
        if self == ZERO {
            return 0.0;
        }
        (f64::from(self.val) / 10.0) * self.pow10()
    }

    /// Width (`hist_bucket_to_double_bin_width`).
    fn width(self) -> f64 {
        if self == ZERO {
            return 0.0;
        }
        self.pow10() / 10.0
    }

    /// Minimum-error midpoint (`hist_bucket_midpoint`): what a sample counts as in the sum.
    pub(crate) fn midpoint(self) -> f64 {
        if self == ZERO {
            return 0.0;
        }
        let bottom = self.left();
        let interval = self.width();
        let top = bottom + interval;
        let ratio = bottom / (bottom + top);
        bottom + interval * ratio
    }
}

/// Bins with their sample counts.
pub(crate) type Bins = BTreeMap<Bin, u64>;

/// Envoy's supported quantiles (`HistogramSettingsImpl::defaultQuantiles`).
pub const QUANTILES: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

/// How Envoy's admin API names them (`P{:g}` of the percentage).
pub const QUANTILE_LABELS: [&str; 10] = [
    "0", "25", "50", "75", "90", "95", "99", "99.5", "99.9", "100",
];

/// `hist_approx_quantile` for [`QUANTILES`]: NaN for each when there is no sample.
pub(crate) fn quantiles(bins: &Bins) -> [f64; 10] {
    let mut out = [f64::NAN; 10];
    let all: Vec<(Bin, u64)> = bins.iter().map(|(b, c)| (*b, *c)).collect();
    let total: f64 = all.iter().map(|(_, c)| *c as f64).sum();
    if total == 0.0 {
        return out;
    }
    let (mut width, mut left, mut lower, mut upper) = (0.0, 0.0, 0.0, 0.0f64);
    let track = |i: usize, width: &mut f64, left: &mut f64, lower: &mut f64, upper: &mut f64| {
        let (b, c) = all[i];
        *width = b.width();
        *left = b.left();
        *lower = *upper;
        *upper = *lower + c as f64;
    };
    let mut i = all.iter().position(|(_, c)| *c > 0).unwrap_or(0);
    track(i, &mut width, &mut left, &mut lower, &mut upper);
    for (q, slot) in QUANTILES.iter().zip(out.iter_mut()) {
        let qn = total * q;
        while i + 1 < all.len() && upper < qn {
            i += 1;
            track(i, &mut width, &mut left, &mut lower, &mut upper);
        }
        *slot = if width == 0.0 {
            left
        } else {
            let n = all[i].1;
            let k = (qn - lower).ceil();
            if k == 0.0 {
                left + 1.0 / (n + 1) as f64 * width
            } else {
                left + k / (n + 1) as f64 * width
            }
        };
    }
    out
}

/// `hist_approx_count_below` (inclusive): samples in bins up to and including the bin that
/// holds `threshold`.
pub(crate) fn count_below(bins: &Bins, threshold: f64) -> u64 {
    let target = bin_of_f64(threshold);
    bins.range(..=target).map(|(_, c)| *c).sum()
}

/// `hist_approx_sum`.
pub(crate) fn approx_sum(bins: &Bins) -> f64 {
    bins.iter()
        .fold(0.0, |sum, (b, c)| sum + b.midpoint() * *c as f64)
}

/// The bin of a non-negative bound (`double_to_hist_bucket`); bounds below 1 fall in the zero
/// bin or just above it, which for integer samples only the zero bin can be below.
fn bin_of_f64(d: f64) -> Bin {
    if d < 1.0 {
        // Integer samples: only zero is at or below a bound under 1.
        return ZERO;
    }
    let exp = d.log10().floor();
    let scaled = d / 10f64.powf(exp) * 10.0;
    let mut val = (scaled + 1e-13).floor() as u64;
    let mut exp = exp as i32;
    if val >= 100 {
        val /= 10;
        exp += 1;
    }
    Bin {
        exp: i8::try_from(exp).unwrap_or(i8::MAX),
        val: u8::try_from(val).unwrap_or(99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bins(values: &[u64]) -> Bins {
        let mut b = Bins::new();
        for v in values {
            *b.entry(Bin::of(*v)).or_default() += 1;
        }
        b
    }

    /// Figures Envoy 1.40 printed for these body sizes (`/stats`, `/stats/prometheus`).
    #[test]
    fn matches_envoy() {
        let b = bins(&[1, 5, 10, 11, 99, 100, 1000, 1099, 50000]);
        let q = quantiles(&b);
        assert_eq!(q[0], 1.05);
        assert_eq!(q[1], 10.5);
        assert_eq!(q[2], 99.5);
        assert_eq!(q[3].to_string(), "1033.3333333333333");
        assert_eq!(q[4], 50500.0);
        assert_eq!(q[9], 50500.0);
        let below: Vec<u64> = crate::metrics::HISTOGRAM_BUCKETS
            .iter()
            .map(|t| count_below(&b, *t))
            .collect();
        assert_eq!(
            below,
            [0, 1, 2, 3, 4, 4, 6, 6, 6, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9]
        );
        assert_eq!(
            format!("{:.31e}", approx_sum(&b)),
            "5.2822598567731554794590920209885e4"
        );
        assert!(quantiles(&Bins::new()).iter().all(|q| q.is_nan()));
    }

    #[test]
    fn bins_hold_two_significant_digits() {
        assert_eq!(Bin::of(0), ZERO);
        assert_eq!((Bin::of(7).left(), Bin::of(7).width()), (7.0, 0.1));
        assert_eq!(Bin::of(1234).left(), 1200.0);
        assert_eq!(Bin::of(1299), Bin::of(1200));
        assert!(Bin::of(99) < Bin::of(100));
        assert_eq!(bin_of_f64(2500.0), Bin::of(2500));
        assert_eq!(bin_of_f64(0.5), ZERO);
        assert_eq!(count_below(&bins(&[0, 1]), 0.5), 1);
    }
}
