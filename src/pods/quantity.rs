//! Kubernetes resource quantities ("100m", "1.5Gi", "2e3") as numbers.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

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
    let v = base * mult;
    if !v.is_finite() {
        return Err(err());
    }
    Ok(v)
}

/// The value in thousandths, rounded up as Kubernetes' MilliValue does.
pub fn milli(q: &Quantity) -> Result<i64, QuantityError> {
    Ok((parse(&q.0)? * 1000.0).ceil() as i64)
}

/// The value in whole units, rounded up as Kubernetes' Value does.
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
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in ["", "abc", "1.2.3", "10 Mi", "1Zi", "--1", "m"] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
