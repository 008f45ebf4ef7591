//! A consumer's readiness condition, `consumer <topic>`: met while the
//! consumer holds an assignment (an empty one counts: the group has more
//! members than partitions), its offset commits succeed and its group
//! coordinator answers.
//!
//! A busy consumer proves itself with its own commits (every 200 ms). An idle
//! one has nothing to commit, so a probe asks the group coordinator for the
//! group's committed offset of one partition (an OffsetFetch, the cheapest
//! request that needs the coordinator) once per probe interval, only while
//! no commit succeeded during that interval: one small request a second at
//! most, none under load. A stopped or partitioned broker fails it within its
//! deadline, where a commit would wait for the request timeout.
//!
//! Unmet at once when the partitions are revoked or the consumer stops; after
//! [`FAILURES_BEFORE_UNMET`] failed coordinator probes in a row; or when
//! offset commits have failed, with no success since, for longer than
//! [`COMMIT_FAILURE_GRACE`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio_util::sync::CancellationToken;

use crate::health::{Condition, Debounce, FAILURES_BEFORE_UNMET, ProbeSettings, millis, seconds};

/// How long offset commits may keep failing, with no success in between,
/// before the consumer is not ready (a rebalance in progress refuses commits
/// for a moment).
pub const COMMIT_FAILURE_GRACE: Duration = Duration::from_secs(3);

/// What the consumer knows of its own state.
struct State {
    /// Partitions assigned, or why there are none.
    assignment: Result<usize, &'static str>,
    /// The last offset commit the coordinator acknowledged.
    last_commit: Option<Instant>,
    /// Since when commits fail (none succeeded since), and the last error.
    commits_failing: Option<(Instant, String)>,
    /// The last coordinator probe that answered.
    last_answer: Option<Instant>,
    /// The run of coordinator probes.
    probes: Debounce,
    /// The last failed probe's reason, while the run lasts.
    probe_error: Option<String>,
}

/// A consumer's readiness condition and what it is made from. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ConsumerHealth {
    condition: Condition,
    state: Arc<Mutex<State>>,
}

impl ConsumerHealth {
    /// Keeps `condition`, unmet until the consumer is assigned.
    pub(crate) fn new(condition: Condition) -> Self {
        let health = Self {
            condition,
            state: Arc::new(Mutex::new(State {
                assignment: Err("waiting for a partition assignment"),
                last_commit: None,
                commits_failing: None,
                last_answer: None,
                probes: Debounce::default(),
                probe_error: None,
            })),
        };
        health.publish(&health.state());
        health
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The group assigned `partitions` partitions to this consumer.
    pub(crate) fn assigned(&self, partitions: usize) {
        let mut state = self.state();
        state.assignment = Ok(partitions);
        // A new generation: what failed in the old one does not count, and
        // joining the group proved that the coordinator answers.
        state.commits_failing = None;
        state.last_answer = Some(Instant::now());
        state.probes = Debounce::default();
        state.probes.observe(true);
        state.probe_error = None;
        self.publish(&state);
    }

    /// The consumer has no partitions any more, because `why`.
    pub(crate) fn unassigned(&self, why: &'static str) {
        let mut state = self.state();
        state.assignment = Err(why);
        self.publish(&state);
    }

    /// The coordinator's answer to an offset commit.
    pub(crate) fn committed(&self, result: &Result<(), KafkaError>) {
        let mut state = self.state();
        match result {
            Ok(()) => {
                state.last_commit = Some(Instant::now());
                state.commits_failing = None;
            }
            // Nothing to commit is no failure.
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            Err(error) => {
                let now = Instant::now();
                let since = state
                    .commits_failing
                    .as_ref()
                    .map_or(now, |(since, _)| *since);
                state.commits_failing = Some((since, error.to_string()));
            }
        }
        self.publish(&state);
    }

    /// Whether a commit succeeded within `window`: proof enough that the
    /// coordinator answers, without a probe.
    fn committed_within(&self, window: Duration) -> bool {
        self.state()
            .last_commit
            .is_some_and(|at| at.elapsed() < window)
    }

    fn is_assigned(&self) -> bool {
        self.state().assignment.is_ok()
    }

    fn probed(&self, outcome: Result<(), String>) {
        let mut state = self.state();
        if state.assignment.is_err() {
            // Not a member: the rebalance callbacks say when it is again.
            return;
        }
        match outcome {
            Ok(()) => {
                state.probes.observe(true);
                state.last_answer = Some(Instant::now());
                state.probe_error = None;
            }
            Err(reason) => {
                state.probes.observe(false);
                state.probe_error = Some(reason);
            }
        }
        self.publish(&state);
    }

    /// Re-evaluates the condition (a commit failure may have outlasted its grace).
    fn refresh(&self) {
        self.publish(&self.state());
    }

    /// Sets the condition from `state`, under its lock so that no later
    /// event is overwritten by an earlier one.
    fn publish(&self, state: &State) {
        let partitions = match state.assignment {
            Ok(partitions) => partitions,
            Err(why) => return self.condition.unmet(why),
        };
        if let Some((since, error)) = &state.commits_failing
            && since.elapsed() >= COMMIT_FAILURE_GRACE
        {
            return self.condition.unmet(format!(
                "offset commits have failed for {}: {error}",
                seconds(since.elapsed())
            ));
        }
        let probe_failing = state
            .probe_error
            .as_deref()
            .map(|error| format!("the group coordinator did not answer: {error}"));
        if !state.probes.is_met() {
            return self.condition.unmet(
                probe_failing
                    .unwrap_or_else(|| "the group coordinator has not answered yet".to_owned()),
            );
        }
        let mut detail = format!(
            "{partitions} partition{} assigned",
            if partitions == 1 { "" } else { "s" }
        );
        let proof = [
            state.last_commit.map(|at| ("last offset commit", at)),
            state.last_answer.map(|at| ("coordinator answered", at)),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|(_, at)| *at);
        if let Some((what, at)) = proof {
            detail.push_str(&format!("; {what} {} ago", millis(at.elapsed())));
        }
        if let Some(failing) = probe_failing {
            detail.push_str(&format!(
                "; {failing} ({} failures in a row make this unmet)",
                FAILURES_BEFORE_UNMET
            ));
        }
        if let Some((since, error)) = &state.commits_failing {
            detail.push_str(&format!(
                "; offset commits failing for {}: {error}",
                seconds(since.elapsed())
            ));
        }
        self.condition.met(detail);
    }

    /// Probes the coordinator of `consumer`'s group every `settings.interval`
    /// (each bounded by `settings.timeout`) while no commit proved it within
    /// the interval, until `shutdown`.
    pub(crate) async fn watch<C>(
        self,
        consumer: Arc<C>,
        topic: String,
        settings: ProbeSettings,
        shutdown: CancellationToken,
    ) where
        C: Consumer<super::rebalance::RebalanceContext> + Send + Sync + 'static,
    {
        let mut interval = tokio::time::interval(settings.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            if !self.is_assigned() {
                // Not a member: nothing to prove until the group assigns again.
                continue;
            }
            if self.committed_within(settings.interval) {
                self.refresh();
                continue;
            }
            let probe = tokio::task::spawn_blocking({
                let (consumer, topic) = (consumer.clone(), topic.clone());
                move || {
                    let mut partitions = TopicPartitionList::new();
                    partitions.add_partition(&topic, 0);
                    consumer
                        .committed_offsets(partitions, settings.timeout)
                        .map(|_| ())
                        .map_err(|error| error.to_string())
                }
            });
            // librdkafka keeps its own deadline; this one is in case it does not.
            let deadline = settings.timeout + Duration::from_millis(500);
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                answered = tokio::time::timeout(deadline, probe) => match answered {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(error)) => Err(format!("the probe panicked: {error}")),
                    Err(_) => Err(format!("no answer within {}", seconds(deadline))),
                },
            };
            self.probed(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Readiness;

    fn consumer() -> (Readiness, ConsumerHealth) {
        let readiness = Readiness::new();
        let health = ConsumerHealth::new(readiness.gate("consumer t", "unknown"));
        (readiness, health)
    }

    #[test]
    fn ready_once_assigned_and_not_after_a_revocation() {
        let (readiness, health) = consumer();
        assert_eq!(
            readiness.unmet(),
            ["consumer t: waiting for a partition assignment"]
        );
        health.assigned(0);
        assert!(readiness.is_ready(), "an empty assignment counts");
        health.unassigned("partitions revoked");
        assert_eq!(readiness.unmet(), ["consumer t: partitions revoked"]);
        health.probed(Ok(()));
        assert!(
            !readiness.is_ready(),
            "a probe does not replace an assignment"
        );
    }

    #[test]
    fn unready_after_two_failed_probes_and_ready_after_one_good_one() {
        let (readiness, health) = consumer();
        health.assigned(3);
        health.probed(Err("timed out".to_owned()));
        assert!(readiness.is_ready(), "one failure is not an outage");
        health.probed(Err("timed out".to_owned()));
        assert_eq!(
            readiness.unmet(),
            ["consumer t: the group coordinator did not answer: timed out"]
        );
        health.probed(Ok(()));
        assert!(readiness.is_ready());
    }

    #[test]
    fn commits_failing_beyond_the_grace_make_it_unready() {
        let (readiness, health) = consumer();
        health.assigned(1);
        let failure = Err(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RequestTimedOut,
        ));
        health.committed(&failure);
        assert!(readiness.is_ready(), "within the grace");
        // As if the first failure were older than the grace.
        health.state().commits_failing.as_mut().unwrap().0 -= COMMIT_FAILURE_GRACE;
        health.refresh();
        let unmet = readiness.unmet();
        assert!(
            unmet[0].starts_with("consumer t: offset commits have failed for 3."),
            "{unmet:?}"
        );
        health.committed(&Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)));
        assert!(!readiness.is_ready(), "nothing to commit proves nothing");
        health.committed(&Ok(()));
        assert!(readiness.is_ready());
    }
}
