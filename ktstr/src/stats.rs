//! Small statistics used by telemetry and assertions: percentiles, mean, coefficient of
//! variation, spread.

/// The `p`-th percentile (0..=100) of `v` by nearest rank; `None` for an empty slice.
pub fn percentile(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    Some(percentile_sorted(&s, p))
}

/// Nearest-rank percentile of an already sorted, non-empty slice.
pub fn percentile_sorted(s: &[u64], p: f64) -> u64 {
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.saturating_sub(1).min(s.len() - 1)]
}

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Population standard deviation divided by the mean; `None` when empty or the mean is 0.
pub fn cv(v: &[f64]) -> Option<f64> {
    let m = mean(v)?;
    if m == 0.0 {
        return None;
    }
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
    Some(var.sqrt() / m)
}

/// `max - min`; `None` for an empty slice.
pub fn spread(v: &[f64]) -> Option<f64> {
    let max = v
        .iter()
        .cloned()
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))?;
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    Some(max - min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[5, 1, 3], 50.0), Some(3));
    }

    #[test]
    fn cv_and_spread() {
        assert_eq!(cv(&[2.0, 2.0, 2.0]), Some(0.0));
        let c = cv(&[1.0, 3.0]).unwrap();
        assert!((c - 0.5).abs() < 1e-12, "{c}");
        assert_eq!(cv(&[]), None);
        assert_eq!(cv(&[0.0, 0.0]), None);
        assert_eq!(spread(&[10.0, 45.0, 30.0]), Some(35.0));
        assert_eq!(spread(&[]), None);
        assert_eq!(mean(&[1.0, 2.0, 3.0]), Some(2.0));
    }
}
