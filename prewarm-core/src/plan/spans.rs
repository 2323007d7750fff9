//! The one interval algebra of the crate: sorted, disjoint, half-open spans
//! `[start, end)` of `u64`, and the three operations everyone needs.
//!
//! The plan works on spans of chunk indexes (widened extents, chunks already
//! claimed), the file-level planner on spans of aligned file bytes, the
//! handover on device byte ranges already read, and the report on the chunks
//! a run's completed reads touched. They all merge, subtract and unite the
//! same way, so they all call this module rather than carry a loop of their
//! own.

/// A half-open interval `[start, end)`.
pub type Span = (u64, u64);

/// The union of `spans` (in any order, empty ones dropped), sorted, with
/// spans whose gap is at most `gap` joined.
pub fn merge(spans: impl IntoIterator<Item = Span>, gap: u64) -> Vec<Span> {
    let mut sorted: Vec<Span> = spans.into_iter().filter(|(s, e)| s < e).collect();
    sorted.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(sorted.len());
    for (s, e) in sorted {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(gap) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a` minus `b`; both sorted and disjoint (as [`merge`] returns them).
pub fn subtract(a: &[Span], b: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while s < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > s {
                        out.push((s, bs));
                    }
                    s = s.max(be);
                    k += 1;
                }
                _ => {
                    out.push((s, e));
                    break;
                }
            }
        }
    }
    out
}

/// The union of two sorted, disjoint span lists.
pub fn union(a: &[Span], b: &[Span]) -> Vec<Span> {
    merge(a.iter().chain(b).copied(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(spans: &[Span]) -> std::collections::BTreeSet<u64> {
        spans.iter().flat_map(|&(s, e)| s..e).collect()
    }

    #[test]
    fn merge_joins_touching_and_close_spans() {
        assert_eq!(merge([(5, 7), (0, 2), (2, 3), (9, 9)], 0), [(0, 3), (5, 7)]);
        assert_eq!(merge([(0, 2), (4, 5)], 2), [(0, 5)]);
        assert_eq!(merge([(0, 2), (5, 6)], 2), [(0, 2), (5, 6)]);
    }

    proptest! {
        #[test]
        fn set_semantics(
            a in prop::collection::vec((0u64..100, 0u64..10), 0..20),
            b in prop::collection::vec((0u64..100, 0u64..10), 0..20),
        ) {
            let a = merge(a.into_iter().map(|(s, l)| (s, s + l)), 0);
            let b = merge(b.into_iter().map(|(s, l)| (s, s + l)), 0);
            let (ma, mb) = (members(&a), members(&b));
            prop_assert_eq!(members(&subtract(&a, &b)), ma.difference(&mb).copied().collect());
            prop_assert_eq!(members(&union(&a, &b)), ma.union(&mb).copied().collect());
            for w in union(&a, &b).windows(2) {
                prop_assert!(w[0].1 < w[1].0, "not disjoint and sorted: {:?}", w);
            }
        }
    }
}
