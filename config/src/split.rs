//! Weighted choice between the targets of a traffic block or a path's splits.
//!
//! Percents are whole numbers that add up to 100, so the pick is one draw in `0..100` and one
//! index into a 100-slot table: no scan, no branch on the number of targets.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

/// Index of a revision in [`crate::RouteTable::revisions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RevisionId(pub u32);

/// One target of a split: a revision, with the headers to set when it is chosen.
#[derive(Debug, Clone)]
pub struct Target {
    pub revision: RevisionId,
    pub percent: u32,
    /// `Knative-Serving-Tag` value for requests that reach this target through a tag.
    pub tag: Option<HeaderValue>,
    /// Headers set on the upstream request after the split (post-split `append_headers`).
    pub append_headers: Arc<[(HeaderName, HeaderValue)]>,
}

/// A weighted split over [`Target`]s.
#[derive(Debug, Clone)]
pub struct Split {
    targets: Box<[Target]>,
    /// `slots[r]` is the target of draw `r`; targets with 0 percent own no slot.
    slots: Box<[u16; 100]>,
}

impl Split {
    /// Builds a split. The percents must add up to 100 (validation guarantees it).
    pub fn new(targets: Vec<Target>) -> Split {
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
        Split {
            targets: targets.into_boxed_slice(),
            slots,
        }
    }

    /// The target for a draw `r` in `0..100` (values above wrap).
    #[inline]
    pub fn pick_with(&self, r: u32) -> &Target {
        let slot = self.slots[(r % 100) as usize];
        &self.targets[usize::from(slot)]
    }

    /// The target for one random draw.
    #[inline]
    pub fn pick(&self) -> &Target {
        self.pick_with(rand::random_range(0..100))
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(rev: u32, percent: u32) -> Target {
        Target {
            revision: RevisionId(rev),
            percent,
            tag: None,
            append_headers: Arc::new([]),
        }
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
            counts[s.pick_with(r).revision.0 as usize] += 1;
        }
        assert_eq!(counts, [1, 0, 2, 4, 93]);
    }

    #[test]
    fn random_pick_is_close_to_weights() {
        let s = Split::new(vec![target(0, 90), target(1, 10)]);
        let n = 100_000;
        let canary = (0..n).filter(|_| s.pick().revision.0 == 1).count();
        let share = canary as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.01, "share {share}");
    }
}
