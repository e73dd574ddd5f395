//! Gap-aware commit positions.
//!
//! Messages of one partition finish out of order when their keys differ. Committing
//! offset 10 because message 10 finished, while message 7 is still being retried, would
//! lose message 7 in a crash. The tracker commits, per partition, only up to the lowest
//! offset still pending.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
struct Partition {
    pending: BTreeSet<u64>,
    /// One past the highest offset handed out.
    dispatched_end: u64,
    /// The last position committed.
    committed: u64,
}

/// Pending offsets per partition, and what may be committed.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<u32, Partition>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A message was handed to a handler.
    ///
    /// An offset below the committed mark is a redelivery: the partition went to
    /// another member (or was revoked) and came back from the broker's position, which
    /// is lower than this tracker's. The mark follows it down, so that finishing the
    /// redelivered messages commits them again.
    pub fn dispatched(&mut self, partition: u32, offset: u64) {
        let p = self.partitions.entry(partition).or_default();
        p.committed = p.committed.min(offset);
        p.pending.insert(offset);
        p.dispatched_end = p.dispatched_end.max(offset + 1);
    }

    /// A message is finished (handled, skipped or dead-lettered).
    pub fn finished(&mut self, partition: u32, offset: u64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.pending.remove(&offset);
        }
    }

    /// How many messages are pending in all.
    pub fn pending_len(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }

    /// `(partition, next_offset)` pairs that moved since the last [`Self::committed`].
    pub fn committable(&self) -> Vec<(u32, u64)> {
        self.partitions
            .iter()
            .filter_map(|(&partition, p)| {
                let next = p.pending.first().copied().unwrap_or(p.dispatched_end);
                (next > p.committed).then_some((partition, next))
            })
            .collect()
    }

    /// Records that `offsets` were committed.
    pub fn committed(&mut self, offsets: &[(u32, u64)]) {
        for &(partition, next) in offsets {
            if let Some(p) = self.partitions.get_mut(&partition) {
                p.committed = p.committed.max(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_later_message_does_not_commit_past_an_unfinished_earlier_one() {
        let mut tracker = OffsetTracker::new();
        for offset in 5..10 {
            tracker.dispatched(0, offset);
        }
        tracker.finished(0, 9);
        tracker.finished(0, 8);
        tracker.finished(0, 5);
        assert_eq!(tracker.committable(), vec![(0, 6)]);
        tracker.committed(&[(0, 6)]);
        assert_eq!(tracker.committable(), vec![]);
        tracker.finished(0, 6);
        tracker.finished(0, 7);
        assert_eq!(tracker.committable(), vec![(0, 10)]);
        assert_eq!(tracker.pending_len(), 0);
    }

    #[test]
    fn a_redelivered_partition_is_committed_again() {
        let mut tracker = OffsetTracker::new();
        for offset in 0..4 {
            tracker.dispatched(0, offset);
            tracker.finished(0, offset);
        }
        tracker.committed(&tracker.committable());
        // The partition came back from offset 2: finishing 2 and 3 again commits 4 again.
        tracker.dispatched(0, 2);
        tracker.dispatched(0, 3);
        assert_eq!(tracker.committable(), vec![]);
        tracker.finished(0, 2);
        tracker.finished(0, 3);
        assert_eq!(tracker.committable(), vec![(0, 4)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::new();
        tracker.dispatched(0, 0);
        tracker.dispatched(1, 0);
        tracker.finished(1, 0);
        assert_eq!(tracker.committable(), vec![(1, 1)]);
    }
}
