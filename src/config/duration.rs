//! Go duration strings ("20s", "2m0s", "1h30m", "300ms"), as Kubernetes
//! config files write them.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a Go duration such as \"20s\", \"2m0s\" or \"1h30m\", at most 2562047h47m16s")]
pub struct DurationError(pub String);

/// Parses a Go duration. Negative durations are refused, and so are those
/// longer than a Go duration holds (2562047h47m16.854775807s, 292 years):
/// kubelet's parser refuses them too.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(err());
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    if !(0.0..=crate::clock::MAX_WAIT_SECS as f64).contains(&total) {
        return Err(err());
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Serde adapter for `Duration` fields written as Go durations.
pub mod serde_go {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_go_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_go_duration("2m0s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("2562047h").unwrap(), Duration::from_secs(2_562_047 * 3600));
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s", "99999999999999999999999h", "100000000h", "2562048h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
