//! Offset progress per partition: what was dispatched and what finished, so
//! that a commit never passes a record that is not finished.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rdkafka::{Offset, TopicPartitionList};

#[derive(Default)]
struct PartitionProgress {
    /// Offsets dispatched and not finished.
    in_flight: BTreeSet<i64>,
    /// Next offset to read after the highest dispatched one.
    next_offset: Option<i64>,
    /// Last committed position.
    committed: Option<i64>,
}

impl PartitionProgress {
    /// The position that is safe to commit: the first unfinished offset, or past everything dispatched.
    fn committable(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next_offset)
    }
}

type ProgressMap = HashMap<(String, i32), PartitionProgress>;

#[derive(Clone, Default)]
pub(super) struct Progress(Arc<Mutex<ProgressMap>>);

impl Progress {
    fn lock(&self) -> MutexGuard<'_, ProgressMap> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn dispatched(&self, topic: &str, partition: i32, offset: i64) {
        let mut map = self.lock();
        let progress = map.entry((topic.to_owned(), partition)).or_default();
        progress.in_flight.insert(offset);
        progress.next_offset = Some(
            progress
                .next_offset
                .map_or(offset + 1, |next| next.max(offset + 1)),
        );
    }

    pub(super) fn finished(&self, topic: &str, partition: i32, offset: i64) {
        // A revoked partition has no entry any more: its completion is not committed.
        if let Some(progress) = self.lock().get_mut(&(topic.to_owned(), partition)) {
            progress.in_flight.remove(&offset);
        }
    }

    /// Positions that advanced since the last commit, for the given partitions (all when `only` is None).
    pub(super) fn to_commit(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        let mut map = self.lock();
        for ((topic, partition), progress) in map.iter_mut() {
            if let Some(only) = only
                && only.find_partition(topic, *partition).is_none()
            {
                continue;
            }
            if let Some(position) = progress.committable()
                && progress.committed != Some(position)
                && list
                    .add_partition_offset(topic, *partition, Offset::Offset(position))
                    .is_ok()
            {
                progress.committed = Some(position);
            }
        }
        list
    }

    /// Forgets what was marked committed (all partitions, or those listed), so
    /// the next commit sends those positions again: after a failed commit, and
    /// before the final one at shutdown.
    pub(super) fn uncommitted(&self, only: Option<&TopicPartitionList>) {
        let mut map = self.lock();
        for ((topic, partition), progress) in map.iter_mut() {
            if only.is_none_or(|only| only.find_partition(topic, *partition).is_some()) {
                progress.committed = None;
            }
        }
    }

    pub(super) fn forget(&self, partitions: &TopicPartitionList) {
        let mut map = self.lock();
        for element in partitions.elements() {
            map.remove(&(element.topic().to_owned(), element.partition()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unfinished_offset() {
        let progress = Progress::default();
        for offset in 10..15 {
            progress.dispatched("t", 0, offset);
        }
        progress.finished("t", 0, 11);
        progress.finished("t", 0, 12);
        let first = progress.to_commit(None);
        assert_eq!(
            first.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(10)
        );
        progress.finished("t", 0, 10);
        let second = progress.to_commit(None);
        assert_eq!(
            second.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(13)
        );
        assert_eq!(progress.to_commit(None).count(), 0, "nothing new to commit");
        progress.finished("t", 0, 14);
        progress.finished("t", 0, 13);
        assert_eq!(
            progress
                .to_commit(None)
                .find_partition("t", 0)
                .unwrap()
                .offset(),
            Offset::Offset(15)
        );
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let progress = Progress::default();
        progress.dispatched("t", 0, 1);
        progress.dispatched("t", 1, 7);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 1);
        progress.forget(&revoked);
        progress.finished("t", 1, 7);
        let offsets = progress.to_commit(None);
        assert!(offsets.find_partition("t", 1).is_none());
        assert_eq!(
            offsets.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(1)
        );
    }
}
