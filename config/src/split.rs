//! Weighted choice between the targets of a traffic block or a path's splits.
//!
//! Percents are whole numbers that add up to 100, so the pick is one draw in `0..100` and one
//! index into a 100-slot table: no scan, no branch on the number of targets.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::objects::Key;

/// One target of a split: a revision, with the headers to set when it is chosen. `R` is what
/// the table's user needs of a revision (the proxy: its run-time revision; `()` when only
/// routing decisions matter).
#[derive(Debug, Clone)]
pub struct Target<R = ()> {
    pub revision: R,
    pub namespace: Arc<str>,
    pub percent: u32,
    /// `Knative-Serving-Tag` value for requests that reach this target through a tag.
    pub tag: Option<HeaderValue>,
    /// Headers set on the upstream request after the split (post-split `append_headers`).
    pub append_headers: Arc<[(HeaderName, HeaderValue)]>,
    /// The revision's name, as a sticky cookie names it.
    pub name: Arc<str>,
    /// Stable per-revision seed for rendezvous hashing: a hash of `namespace/name`, so a
    /// target keeps its scores when other targets or the order change.
    pub seed: u64,
}

impl<R> Target<R> {
    /// A target of revision `key` (its name and namespace shared with the key).
    pub fn new(revision: R, key: &Key, percent: u32) -> Target<R> {
        Target {
            revision,
            namespace: key.namespace.clone(),
            percent,
            tag: None,
            append_headers: Arc::new([]),
            name: key.name.clone(),
            seed: stable_hash(format!("{}/{}", key.namespace, key.name).as_bytes()),
        }
    }
}

/// A weighted split over [`Target`]s.
#[derive(Debug, Clone)]
pub struct Split<R = ()> {
    targets: Box<[Target<R>]>,
    /// `slots[r]` is the target of draw `r`; targets with 0 percent own no slot. `None`
    /// when one target has all 100 (most splits): it is `targets[first]`, and 200 bytes a
    /// split are saved (100,000 services make 200,000 splits).
    slots: Option<Box<[u16; 100]>>,
    /// The target of draw 0.
    first: u16,
}

impl<R> Split<R> {
    /// Builds a split. The percents must add up to 100 (validation guarantees it).
    pub fn new(targets: Vec<Target<R>>) -> Split<R> {
        debug_assert_eq!(targets.iter().map(|t| t.percent).sum::<u32>(), 100);
        debug_assert!(targets.len() <= usize::from(u16::MAX));
        let mut slots = Box::new([0u16; 100]);
        let mut next = 0usize;
        for (i, t) in targets.iter().enumerate() {
            for _ in 0..t.percent {
                if next < 100 {
                    slots[next] = i as u16;
                    next += 1;
                }
            }
        }
        let first = slots[0];
        let whole = targets.iter().any(|t| t.percent >= 100);
        Split {
            targets: targets.into_boxed_slice(),
            slots: (!whole).then_some(slots),
            first,
        }
    }

    /// The target for a draw `r` in `0..100` (values above wrap).
    #[inline]
    pub fn pick_with(&self, r: u32) -> &Target<R> {
        let slot = match &self.slots {
            Some(s) => s[(r % 100) as usize],
            None => self.first,
        };
        &self.targets[usize::from(slot)]
    }

    /// The target for one random draw.
    #[inline]
    pub fn pick(&self) -> &Target<R> {
        self.pick_with(rand::random_range(0..100))
    }

    pub fn targets(&self) -> &[Target<R>] {
        &self.targets
    }

    /// Weighted rendezvous (highest random weight) choice for `key`: each target with a
    /// percent above 0 scores `-ln(u) / percent`, with `u` a stable hash of key and target in
    /// (0, 1); the lowest score wins. The result depends only on the key, the targets'
    /// names and their weights, so every replica agrees; raising one target's weight only
    /// lowers its own scores, so keys move only towards it (the fewest that can move).
    #[inline]
    pub fn pick_by_key(&self, key: &[u8]) -> &Target<R> {
        let k = stable_hash(key);
        let mut best = &self.targets[usize::from(self.first)];
        let mut best_score = f64::INFINITY;
        for t in self.targets.iter().filter(|t| t.percent > 0) {
            let h = mix(k ^ t.seed);
            // 53 random bits, shifted into (0, 1]: never 0, so ln is finite.
            let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let score = -u.ln() / f64::from(t.percent);
            if score < best_score {
                best_score = score;
                best = t;
            }
        }
        best
    }

    /// The target of revision `name` if it is in this split with a percent above 0.
    #[inline]
    pub fn live_target(&self, name: &[u8]) -> Option<&Target<R>> {
        self.targets
            .iter()
            .find(|t| t.percent > 0 && t.name.as_bytes() == name)
    }
}

/// FNV-1a 64 then a splitmix64 finaliser: stable across processes, builds and platforms
/// (unlike the std hasher, which is seeded per process), and well mixed.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(rev: u32, percent: u32) -> Target<u32> {
        Target::new(rev, &Key::new("default", &format!("rev-{rev}")), percent)
    }

    fn split(percents: &[u32]) -> Split<u32> {
        Split::new(
            percents
                .iter()
                .enumerate()
                .map(|(i, p)| target(i as u32, *p))
                .collect(),
        )
    }

    #[test]
    fn rendezvous_shares_follow_weights() {
        let s = split(&[90, 10]);
        let n = 20_000;
        let canary = (0..n)
            .filter(|i| s.pick_by_key(format!("user-{i}").as_bytes()).revision == 1)
            .count();
        let share = canary as f64 / f64::from(n);
        assert!((share - 0.10).abs() < 0.01, "share {share}");
    }

    #[test]
    fn raising_the_canary_moves_only_stable_keys() {
        let steps = [split(&[90, 10]), split(&[80, 20]), split(&[50, 50])];
        let n = 20_000;
        let keys: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
        let picks: Vec<Vec<u32>> = steps
            .iter()
            .map(|s| {
                keys.iter()
                    .map(|k| s.pick_by_key(k.as_bytes()).revision)
                    .collect()
            })
            .collect();
        for w in picks.windows(2) {
            let back = w[0]
                .iter()
                .zip(&w[1])
                .filter(|(a, b)| **a == 1 && **b == 0)
                .count();
            assert_eq!(back, 0, "no canary key goes back to stable");
        }
        // 90->80: 1/9 of stable keys move; 80->50: 3/8 of them.
        let moved = |a: &[u32], b: &[u32]| {
            a.iter()
                .zip(b)
                .filter(|(x, y)| **x == 0 && **y == 1)
                .count() as f64
                / a.iter().filter(|x| **x == 0).count() as f64
        };
        assert!((moved(&picks[0], &picks[1]) - 1.0 / 9.0).abs() < 0.02);
        assert!((moved(&picks[1], &picks[2]) - 3.0 / 8.0).abs() < 0.02);
    }

    #[test]
    fn zero_percent_targets_never_win_by_key() {
        let s = split(&[100, 0]);
        assert!((0..1000).all(|i| s.pick_by_key(format!("{i}").as_bytes()).revision == 0));
        assert!(s.live_target(b"rev-1").is_none());
        assert!(s.live_target(b"rev-0").is_some());
    }

    #[test]
    fn every_draw_lands_on_its_share() {
        let s = Split::new(vec![
            target(0, 1),
            target(1, 0),
            target(2, 2),
            target(3, 4),
            target(4, 93),
        ]);
        let mut counts = [0u32; 5];
        for r in 0..100 {
            counts[s.pick_with(r).revision as usize] += 1;
        }
        assert_eq!(counts, [1, 0, 2, 4, 93]);
    }

    #[test]
    fn random_pick_is_close_to_weights() {
        let s = Split::new(vec![target(0, 90), target(1, 10)]);
        let n = 100_000;
        let canary = (0..n).filter(|_| s.pick().revision == 1).count();
        let share = canary as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.01, "share {share}");
    }
}
