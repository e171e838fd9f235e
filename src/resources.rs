//! Resource arithmetic: Kubernetes quantities ("100m", "1.5Gi", "2e3") as
//! numbers, and [`Amount`], the type every sum and scaling of requests and
//! limits goes through. The apiserver accepts quantities up to about 8Ei
//! and int64 fields without bound, so nothing here wraps: an amount
//! saturates at [`Amount::MAX`], which means "more than any node has" (for
//! a limit: unlimited; for a request: refused by admission), never a small
//! number.
#![deny(clippy::arithmetic_side_effects)]

use std::iter::Sum;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A non-negative amount of a resource in one unit (millicores, bytes,
/// microseconds...), saturating instead of wrapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Amount = Amount(0);
    pub const MAX: Amount = Amount(i64::MAX);

    /// `v`, with a negative value counted as nothing.
    pub const fn new(v: i64) -> Self {
        Amount(if v < 0 { 0 } else { v })
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// `self * num / den`, exact in 128 bits, saturating; a zero `den` gives
    /// [`Amount::MAX`].
    pub fn scale(self, num: i64, den: i64) -> Amount {
        let product = i128::from(self.0).saturating_mul(i128::from(num));
        match product.checked_div(i128::from(den)) {
            Some(q) => Amount(i64::try_from(q.max(0)).unwrap_or(i64::MAX)),
            None => Amount::MAX,
        }
    }
}

impl Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, Amount::saturating_add)
    }
}

/// The CFS period kubelet uses, in µs.
pub const CPU_PERIOD_US: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
const MIN_QUOTA_US: i64 = 1_000;
/// The largest CFS quota the kernel takes (its MAX_BW: 2^44 - 1 µs); a CPU
/// limit beyond it (some 176 million CPUs) limits nothing.
pub const MAX_QUOTA_US: i64 = (1 << 44) - 1;

/// CPU shares for a CPU request in millicores, as kubelet's MilliCPUToShares.
pub fn cpu_shares(request_millis: Amount) -> i64 {
    if request_millis.is_zero() {
        return MIN_SHARES;
    }
    request_millis.scale(1024, 1000).get().clamp(MIN_SHARES, MAX_SHARES)
}

/// The CFS quota (µs per [`CPU_PERIOD_US`]) for a CPU limit in millicores,
/// as kubelet's MilliCPUToQuota; `None` for no limit, or one too large for
/// the kernel to enforce.
pub fn cpu_quota(limit_millis: Amount) -> Option<i64> {
    if limit_millis.is_zero() {
        return None;
    }
    let q = limit_millis.scale(CPU_PERIOD_US, 1000).get().max(MIN_QUOTA_US);
    (q <= MAX_QUOTA_US).then_some(q)
}

/// The cgroup v2 cpu.weight for CPU shares (the OCI runtimes' conversion:
/// 2..262144 onto 1..10000).
pub fn cpu_weight(shares: i64) -> i64 {
    let s = shares.clamp(MIN_SHARES, MAX_SHARES);
    Amount::new(s.saturating_sub(MIN_SHARES)).scale(9999, 262_142).get().saturating_add(1)
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

/// Parses a quantity into its value in base units.
pub fn parse(q: &str) -> Result<f64, QuantityError> {
    let err = || QuantityError(q.to_string());
    let s = q.trim();
    let split = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+' || *c == '-'))
        .map_or(s.len(), |(i, _)| i);
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "+" || num == "-" || num.matches('.').count() > 1 {
        return Err(err());
    }
    let base: f64 = num.parse().map_err(|_| err())?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    #[allow(clippy::arithmetic_side_effects)] // float arithmetic: checked below
    let v = base * mult;
    if !v.is_finite() {
        return Err(err());
    }
    Ok(v)
}

/// The value in thousandths, rounded up as Kubernetes' MilliValue does
/// (saturating at the int64 bounds, as a float-to-int cast does).
pub fn milli(q: &Quantity) -> Result<i64, QuantityError> {
    #[allow(clippy::arithmetic_side_effects)] // float arithmetic: no overflow, the cast saturates
    let v = (parse(&q.0)? * 1000.0).ceil();
    Ok(v as i64)
}

/// The value in whole units, rounded up as Kubernetes' Value does
/// (saturating at the int64 bounds).
pub fn value(q: &Quantity) -> Result<i64, QuantityError> {
    Ok(parse(&q.0)?.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn parses_the_suffixes_kubernetes_uses() {
        assert_eq!(milli(&q("100m")).unwrap(), 100);
        assert_eq!(milli(&q("1")).unwrap(), 1000);
        assert_eq!(milli(&q("0.5")).unwrap(), 500);
        assert_eq!(milli(&q("1.5")).unwrap(), 1500);
        assert_eq!(value(&q("128Mi")).unwrap(), 128 * 1024 * 1024);
        assert_eq!(value(&q("1Gi")).unwrap(), 1 << 30);
        assert_eq!(value(&q("1G")).unwrap(), 1_000_000_000);
        assert_eq!(value(&q("2e3")).unwrap(), 2000);
        assert_eq!(value(&q("500k")).unwrap(), 500_000);
        assert_eq!(milli(&q("1u")).unwrap(), 1, "rounds up");
        assert_eq!(milli(&q("5P")).unwrap(), 5_000_000_000_000_000_000);
        assert_eq!(milli(&q("9E")).unwrap(), i64::MAX, "saturates");
    }

    #[test]
    fn cpu_conversions_never_wrap() {
        assert_eq!(cpu_shares(Amount::ZERO), 2);
        assert_eq!(cpu_shares(Amount::new(500)), 512);
        assert_eq!(cpu_shares(Amount::MAX), 262_144);
        assert_eq!((cpu_weight(2), cpu_weight(1024), cpu_weight(262_144), cpu_weight(i64::MIN)), (1, 39, 10_000, 1));
        assert_eq!(cpu_quota(Amount::new(500)), Some(50_000));
        assert_eq!(cpu_quota(Amount::new(1)), Some(1_000), "kubelet's minimum quota");
        assert_eq!(cpu_quota(Amount::ZERO), None);
        // limits: {cpu: 1e11} used to wrap and throttle the pod to 1 % of a CPU.
        assert_eq!(cpu_quota(Amount::new(milli(&q("1e11")).unwrap())), None, "beyond the kernel's quota: unlimited");
        assert_eq!(cpu_quota(Amount::new(milli(&q("100000")).unwrap())), Some(10_000_000_000));
    }

    #[test]
    fn amounts_saturate() {
        assert_eq!([Amount::new(i64::MAX - 1), Amount::new(5)].into_iter().sum::<Amount>(), Amount::MAX);
        assert_eq!(Amount::new(-3), Amount::ZERO);
        assert_eq!(Amount::new(1_500).scale(100_000, 1_000), Amount::new(150_000));
        assert_eq!(Amount::new(100_000_000_000_000).scale(100_000, 1_000), Amount::new(10_000_000_000_000_000));
        assert_eq!(Amount::MAX.scale(100_000, 1_000), Amount::MAX);
        assert_eq!(Amount::new(7).scale(1, 0), Amount::MAX);
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in ["", "abc", "1.2.3", "10 Mi", "1Zi", "--1", "m"] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
