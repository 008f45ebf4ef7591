//! The consumer's librdkafka context: commits finished work of revoked
//! partitions, tracks assignments (pausing) and reports them and the offset
//! commits' outcomes to the consumer's readiness condition, and turns
//! librdkafka's statistics into the lag gauge.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::health::ConsumerHealth;
use super::metrics::{ConsumerMetrics, LagLabels};
use super::progress::Progress;

/// Commits finished work of revoked partitions and forgets them; counts
/// assignments, so that the loop can pause partitions it was newly given.
pub(super) struct RebalanceContext {
    pub(super) progress: Progress,
    pub(super) assignments: Arc<std::sync::atomic::AtomicU64>,
    /// The consumer's readiness condition: assignments and commit outcomes.
    pub(super) health: ConsumerHealth,
    /// Where the lag from librdkafka's statistics goes.
    pub(super) metrics: ConsumerMetrics,
    /// The consumer group, a label of the lag.
    pub(super) group: String,
}

impl ClientContext for RebalanceContext {
    /// librdkafka's periodic statistics: the lag of each partition this
    /// consumer is assigned (high watermark minus committed offset, or minus
    /// the low watermark while nothing is committed).
    fn stats(&self, statistics: rdkafka::Statistics) {
        // Only partitions this member owns and fetches now: librdkafka keeps
        // revoked ones in its statistics, frozen, with `fetch_state` "stopped".
        let mut lags = Vec::new();
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                if *partition < 0
                    || !stats.desired
                    || stats.fetch_state != "active"
                    || stats.hi_offset < 0
                {
                    continue;
                }
                // Nothing committed yet: everything retained is still to be read.
                let lag = if stats.committed_offset >= 0 {
                    stats.hi_offset - stats.committed_offset
                } else if stats.lo_offset >= 0 {
                    stats.hi_offset - stats.lo_offset
                } else {
                    continue;
                };
                lags.push((topic.clone(), partition.to_string(), lag.max(0)));
            }
        }
        self.metrics.lag.clear();
        for (topic, partition, lag) in lags {
            self.metrics
                .lag
                .get_or_create(&LagLabels {
                    group: self.group.clone(),
                    topic,
                    partition,
                })
                .set(lag);
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let offsets = self.progress.to_commit(Some(partitions));
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
            {
                tracing::warn!(%error, "failed to commit offsets of revoked partitions");
            }
            self.progress.forget(partitions);
            self.health
                .unassigned("partitions revoked, waiting for a new assignment");
            tracing::info!(partitions = partitions.count(), "partitions revoked");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        self.health.committed(&result);
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed, it will be retried");
            self.progress.uncommitted(Some(offsets));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.assignments
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.health.assigned(partitions.count());
                tracing::info!(partitions = partitions.count(), "partitions assigned")
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}
