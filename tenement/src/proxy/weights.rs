//! Weighted choice between a service's instances, lock-free on the request path.
//!
//! Each instance owns a stretch of `0..total` as long as its weight (after dividing all
//! weights by their common divisor). The n-th pick takes slot `n * step mod total`, with
//! `step` coprime to `total` and close to `total / golden ratio`: every run of `total`
//! picks visits each slot exactly once, so the shares are exact over every cycle, and the
//! golden-ratio stride spreads each instance's picks evenly inside the cycle (80/20 gives
//! A A A A B, never A*80 then B*20). A pick is one atomic increment and a binary search.

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct Rotation<T> {
    members: Vec<T>,
    /// `ends[i]` is the first slot after member i's stretch.
    ends: Vec<u64>,
    total: u64,
    step: u64,
    picks: AtomicU64,
}

impl<T> Rotation<T> {
    /// Members with weight 0 take no part; `None` when no member has a weight.
    pub(crate) fn new(weighted: impl IntoIterator<Item = (T, u8)>) -> Option<Rotation<T>> {
        let weighted: Vec<(T, u64)> = weighted
            .into_iter()
            .filter(|(_, weight)| *weight > 0)
            .map(|(member, weight)| (member, u64::from(weight)))
            .collect();
        let divisor = weighted.iter().fold(0, |acc, (_, w)| gcd(acc, *w));
        if divisor == 0 {
            return None;
        }
        let mut members = Vec::with_capacity(weighted.len());
        let mut ends = Vec::with_capacity(weighted.len());
        let mut total = 0;
        for (member, weight) in weighted {
            total += weight / divisor;
            members.push(member);
            ends.push(total);
        }
        Some(Rotation {
            members,
            ends,
            total,
            step: golden_step(total),
            picks: AtomicU64::new(0),
        })
    }

    pub(crate) fn pick(&self) -> &T {
        let n = self.picks.fetch_add(1, Ordering::Relaxed) % self.total;
        let slot = n * self.step % self.total;
        let index = self.ends.partition_point(|&end| end <= slot);
        &self.members[index]
    }

    #[cfg(test)]
    pub(crate) fn members(&self) -> &[T] {
        &self.members
    }
}

/// The integer nearest `total / φ` that shares no divisor with `total`.
fn golden_step(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let ideal = (total as f64 * 0.618_033_988_749_895).round() as u64;
    (0..total)
        .flat_map(|distance| [ideal.saturating_sub(distance), ideal + distance])
        .find(|&step| step > 0 && step < total && gcd(step, total) == 1)
        .unwrap_or(1)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rotation: &Rotation<char>, picks: usize) -> std::collections::BTreeMap<char, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..picks {
            *counts.entry(*rotation.pick()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn shares_are_exact_over_whole_cycles() {
        let rotation = Rotation::new([('a', 80), ('b', 20)]).unwrap();
        assert_eq!(counts(&rotation, 1000), [('a', 800), ('b', 200)].into());
        let rotation = Rotation::new([('a', 70), ('b', 20), ('c', 10), ('z', 0)]).unwrap();
        assert_eq!(
            counts(&rotation, 1000),
            [('a', 700), ('b', 200), ('c', 100)].into()
        );
        let rotation = Rotation::new([('a', 37), ('b', 100), ('c', 1)]).unwrap();
        assert_eq!(
            counts(&rotation, 138),
            [('a', 37), ('b', 100), ('c', 1)].into()
        );
    }

    #[test]
    fn picks_are_spread_not_bunched() {
        // Every window of 10 picks of an 80/20 split holds exactly 2 of the 20.
        let rotation = Rotation::new([('a', 80), ('b', 20)]).unwrap();
        let sequence: Vec<char> = (0..200).map(|_| *rotation.pick()).collect();
        for window in sequence.windows(10) {
            assert_eq!(
                window.iter().filter(|&&c| c == 'b').count(),
                2,
                "{window:?}"
            );
        }
        // Equal weights take turns.
        let rotation = Rotation::new([('a', 5), ('b', 5), ('c', 5)]).unwrap();
        let sequence: Vec<char> = (0..30).map(|_| *rotation.pick()).collect();
        for window in sequence.windows(3) {
            let mut window = window.to_vec();
            window.sort();
            assert_eq!(window, ['a', 'b', 'c']);
        }
    }

    #[test]
    fn every_prefix_stays_close_to_the_weights() {
        let weights = [('a', 53u8), ('b', 29), ('c', 11), ('d', 7)];
        let rotation = Rotation::new(weights).unwrap();
        let total: f64 = weights.iter().map(|(_, w)| f64::from(*w)).sum();
        let mut seen = std::collections::BTreeMap::<char, f64>::new();
        for n in 1..=1000 {
            *seen.entry(*rotation.pick()).or_default() += 1.0;
            for (member, weight) in weights {
                let expected = f64::from(weight) / total * f64::from(n);
                let got = seen.get(&member).copied().unwrap_or(0.0);
                assert!(
                    (got - expected).abs() < 3.0,
                    "{member} after {n}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn nothing_to_pick_without_weight() {
        assert!(Rotation::new([('a', 0), ('b', 0)]).is_none());
        assert!(Rotation::<char>::new([]).is_none());
        let single = Rotation::new([('a', 0), ('b', 3)]).unwrap();
        assert_eq!(counts(&single, 5), [('b', 5)].into());
    }
}
