//! Sets of replica indexes, stored in the compact text form of batch/v1 Job's
//! `completedIndexes` ("1,3-5,7"), so a huge job's status stays small.

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Replica indexes (0 and up) as sorted, disjoint, non-adjacent ranges. Memory and text grow
/// with the number of gaps, not with the number of indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSet {
    /// Inclusive ranges, ascending; a gap of at least one index between two ranges.
    ranges: Vec<(i32, i32)>,
}

impl IndexSet {
    pub fn new() -> IndexSet {
        IndexSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many indexes the set holds.
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|&(a, b)| usize::try_from(i64::from(b) - i64::from(a) + 1).unwrap_or(0)).sum()
    }

    pub fn contains(&self, i: i32) -> bool {
        // The first range that ends at or after `i` is the only one that can hold it.
        let at = self.ranges.partition_point(|&(_, b)| b < i);
        self.ranges.get(at).is_some_and(|&(a, _)| a <= i)
    }

    /// Adds `i` (negative indexes are ignored); returns whether it was new.
    pub fn insert(&mut self, i: i32) -> bool {
        self.insert_range(i, i)
    }

    /// Adds every index from `a` to `b` inclusive; returns whether any was new.
    fn insert_range(&mut self, a: i32, b: i32) -> bool {
        let (a, b) = (a.max(0), b);
        if a > b {
            return false;
        }
        // Ranges that overlap or touch [a, b] merge with it.
        let first = self.ranges.partition_point(|&(_, hi)| i64::from(hi) + 1 < i64::from(a));
        let last = self.ranges.partition_point(|&(lo, _)| i64::from(lo) <= i64::from(b) + 1);
        let covered = self.ranges[first..last].iter().any(|&(lo, hi)| lo <= a && b <= hi);
        if covered {
            return false;
        }
        let lo = self.ranges[first..last].first().map_or(a, |&(lo, _)| lo.min(a));
        let hi = self.ranges[first..last].last().map_or(b, |&(_, hi)| hi.max(b));
        self.ranges.splice(first..last, [(lo, hi)]);
        true
    }

    /// Every index, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..=b)
    }

    /// Reads the text form leniently: what is not a number or a range `a-b` is skipped, so a
    /// damaged status never stops the operator from reading the job.
    pub fn parse(text: &str) -> IndexSet {
        let mut set = IndexSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let range = match part.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => part.parse().ok().map(|i| (i, i)),
            };
            if let Some((a, b)) = range {
                set.insert_range(a, b);
            }
        }
        set
    }
}

impl FromIterator<i32> for IndexSet {
    fn from_iter<T: IntoIterator<Item = i32>>(iter: T) -> IndexSet {
        let mut set = IndexSet::new();
        set.extend(iter);
        set
    }
}

impl Extend<i32> for IndexSet {
    fn extend<T: IntoIterator<Item = i32>>(&mut self, iter: T) {
        for i in iter {
            self.insert(i);
        }
    }
}

/// batch/v1's form: single indexes and pairs as numbers, three or more consecutive ones as
/// `first-last`, comma-separated, ascending.
impl fmt::Display for IndexSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for &(a, b) in &self.ranges {
            match i64::from(b) - i64::from(a) {
                0 => write!(f, "{sep}{a}")?,
                1 => write!(f, "{sep}{a},{b}")?,
                _ => write!(f, "{sep}{a}-{b}")?,
            }
            sep = ",";
        }
        Ok(())
    }
}

impl Serialize for IndexSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IndexSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IndexSet, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        Ok(IndexSet::parse(&text))
    }
}

impl JsonSchema for IndexSet {
    fn schema_name() -> Cow<'static, str> {
        "IndexSet".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let cases: [(&[i32], &str); 7] = [
            (&[], ""),
            (&[0], "0"),
            (&[0, 1], "0,1"),
            (&[0, 1, 2], "0-2"),
            (&[1, 3, 4, 5, 7], "1,3-5,7"),
            (&[0, 1, 2, 3, 7, 9, 10], "0-3,7,9,10"),
            (&[5, 4, 3, 9, 3], "3-5,9"),
        ];
        for (indexes, text) in cases {
            let set: IndexSet = indexes.iter().copied().collect();
            assert_eq!(set.to_string(), text, "{indexes:?}");
            assert_eq!(IndexSet::parse(text), set, "{text}");
            let mut sorted: Vec<i32> = indexes.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(set.iter().collect::<Vec<_>>(), sorted);
            assert_eq!(set.len(), sorted.len());
            let json = serde_json::to_string(&set).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<IndexSet>(&json).unwrap(), set);
        }
    }

    #[test]
    fn inserts_merge_ranges() {
        let mut set = IndexSet::parse("0-2,6-8");
        assert!(!set.insert(1), "already in");
        assert!(set.insert(4));
        assert_eq!(set.to_string(), "0-2,4,6-8");
        assert!(set.insert(3));
        assert_eq!(set.to_string(), "0-4,6-8");
        assert!(set.insert(5));
        assert_eq!(set.to_string(), "0-8");
        assert!(set.insert(10));
        assert!(!set.insert(-1), "negative indexes are not replicas");
        assert_eq!(set.to_string(), "0-8,10");
        for (i, want) in [(-1, false), (0, true), (8, true), (9, false), (10, true), (11, false)] {
            assert_eq!(set.contains(i), want, "{i}");
        }
    }

    #[test]
    fn damaged_text_is_read_as_far_as_it_goes() {
        for (text, want) in [
            ("1,x,3", "1,3"),
            ("2-4,,7", "2-4,7"),
            ("5-3", ""),
            (" 1 , 2 - 3 ", "1-3"),
            ("-1,0", "0"),
            ("3,1-2", "1-3"),
            ("9999999999", ""),
        ] {
            assert_eq!(IndexSet::parse(text).to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn a_huge_range_costs_nothing() {
        let set = IndexSet::parse("0-2147483646");
        assert_eq!(set.len(), 2_147_483_647);
        assert!(set.contains(2_147_483_646) && !set.contains(2_147_483_647));
        assert_eq!(set.to_string(), "0-2147483646");
    }
}
