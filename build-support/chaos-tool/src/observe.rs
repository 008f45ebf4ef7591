//! What a run sees while the faults happen: every instance's `/readyz`,
//! polled twice a second, kept as a list of changes; and, once the load is
//! done, each fault's window set against the careful client's calls and those
//! changes — PlaceOrder p50/p99 and the longest call while the fault lasted,
//! and what readiness showed — for the second table and the invariants of a
//! cluster run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::load::Call;
use crate::schedule::Fault;
use crate::supervise::readyz;

/// How often every `/readyz` is read.
const POLL: Duration = Duration::from_millis(500);

/// After a network fault heals, how long the instance may take to be ready again.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// How long after a fault began the impaired instance may still say it is ready.
pub const DETECTION_LIMIT: Duration = Duration::from_secs(15);

/// One change of an instance's readiness.
#[derive(Clone, Debug)]
pub struct Change {
    /// When it was seen, after the load's start.
    pub at: Duration,
    /// The instance.
    pub instance: String,
    /// Ready (200) or not (any other answer, or none).
    pub ready: bool,
    /// The body's first line, or why there was no answer.
    pub reason: String,
}

/// The readiness watcher: a task and the changes it saw.
pub struct Watcher {
    changes: Arc<Mutex<Vec<Change>>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts polling `endpoints`; times are taken from `origin`.
    pub fn start(endpoints: Vec<(String, SocketAddr)>, origin: Instant) -> Self {
        let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
        let recorded = changes.clone();
        let task = tokio::spawn(async move {
            // A change is a new answer (ready or not) or a new reason.
            let mut last: BTreeMap<String, (bool, String)> = BTreeMap::new();
            let mut ticker = tokio::time::interval(POLL);
            loop {
                ticker.tick().await;
                // All at once: a poll must not take one probe's timeout per instance.
                let mut probes = tokio::task::JoinSet::new();
                for (name, addr) in endpoints.iter().cloned() {
                    probes.spawn(async move { (name, readyz(addr).await) });
                }
                for (name, answer) in probes.join_all().await {
                    let (ready, reason) = match answer {
                        Some((ready, body)) => (ready, body),
                        None => (false, "no answer within 2 s".to_owned()),
                    };
                    let state = (ready, reason.clone());
                    if last.get(&name) != Some(&state) {
                        last.insert(name.clone(), state);
                        recorded.lock().unwrap().push(Change {
                            at: origin.elapsed(),
                            instance: name,
                            ready,
                            reason,
                        });
                    }
                }
            }
        });
        Self { changes, task }
    }

    /// Whether `instance` answered ready at the last poll (an instance not
    /// polled yet is not).
    pub fn ready_now(&self, instance: &str) -> bool {
        self.changes
            .lock()
            .unwrap()
            .iter()
            .rfind(|change| change.instance == instance)
            .is_some_and(|change| change.ready)
    }

    /// Keeps polling until every instance a network fault impaired is ready
    /// again, or [`RECOVERY_LIMIT`] (and a poll) has passed since its heal:
    /// the findings judge recovery from what was seen, so the watcher must not
    /// stop before an instance healed late in the run had the time it is
    /// allowed. `windows` carry their heal times (after `origin`).
    pub async fn await_recovery(&self, windows: &[Window], origin: Instant) {
        let waits: Vec<(&str, Duration)> = windows
            .iter()
            .filter_map(|window| {
                let instance = window.fault.impaired()?;
                Some((instance, window.to + RECOVERY_LIMIT + POLL * 2))
            })
            .collect();
        loop {
            let now = origin.elapsed();
            let pending = waits
                .iter()
                .any(|(instance, until)| now < *until && !self.ready_now(instance));
            if !pending {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops polling and returns the changes seen.
    pub fn finish(self) -> Vec<Change> {
        self.task.abort();
        self.changes.lock().unwrap().clone()
    }
}

/// One injected fault: what, when it began and when it ended (the restart
/// done, or the network healed), after the load's start.
#[derive(Clone, Debug)]
pub struct Window {
    /// The fault.
    pub fault: Fault,
    /// The instance or broker it hit, for the table.
    pub target: String,
    /// When it began.
    pub from: Duration,
    /// When it ended.
    pub to: Duration,
}

/// What one fault's window showed.
pub struct Finding {
    /// The fault's row in the table.
    pub line: String,
    /// A network fault whose instance had to turn not ready, and was not
    /// killed or started again near its start (a process that is starting
    /// does not answer, which proves nothing about its readiness logic).
    pub evaluated: bool,
    /// A network fault whose instance had to turn not ready and did not.
    pub undetected: bool,
    /// A network fault whose instance was not ready again within [`RECOVERY_LIMIT`] of the heal.
    pub unrecovered: bool,
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * share).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Sets each window against the calls and the readiness changes.
pub fn findings(windows: &[Window], calls: &[Call], changes: &[Change]) -> Vec<Finding> {
    windows
        .iter()
        .map(|window| {
            let calls_in: Vec<&Call> = calls
                .iter()
                .filter(|call| call.started >= window.from && call.started <= window.to)
                .collect();
            let mut took: Vec<Duration> = calls_in.iter().map(|call| call.took).collect();
            took.sort();
            let failed = calls_in.iter().filter(|call| call.outcome != "OK").count();
            let unready: Vec<&Change> = changes
                .iter()
                .filter(|change| {
                    !change.ready
                        && change.at >= window.from
                        && change.at <= window.to + Duration::from_secs(2)
                })
                .collect();
            let mut readiness: BTreeMap<&str, &str> = BTreeMap::new();
            for change in &unready {
                readiness
                    .entry(change.instance.as_str())
                    .or_insert(change.reason.as_str());
            }
            let (mut undetected, mut unrecovered, mut note) = (false, false, String::new());
            let mut evaluated = false;
            if let Some(instance) = window.fault.impaired() {
                let restarted = windows.iter().any(|other| {
                    other.target == instance
                        && other.fault.impaired().is_none()
                        && other.from <= window.from + DETECTION_LIMIT
                        && other.to + Duration::from_secs(3) >= window.from
                });
                // Reported: not ready, answering, for the fault's reason (a
                // restart or another fault's reason in the window proves nothing).
                let reported = |change: &Change| {
                    !change.ready
                        && window
                            .fault
                            .unready_reason()
                            .is_some_and(|word| change.reason.contains(word))
                };
                let state_at = |at: Duration| {
                    changes
                        .iter()
                        .rfind(|change| change.instance == instance && change.at <= at)
                };
                let ready_at = |at: Duration| state_at(at).is_none_or(|change| change.ready);
                let first_unready = if state_at(window.from).is_some_and(reported) {
                    Some(Duration::ZERO)
                } else {
                    changes
                        .iter()
                        .filter(|change| {
                            change.instance == instance
                                && change.at >= window.from
                                && change.at <= window.to
                        })
                        .find(|change| reported(change))
                        .map(|change| change.at.saturating_sub(window.from))
                };
                let back = changes
                    .iter()
                    .find(|change| {
                        change.instance == instance && change.at >= window.to && change.ready
                    })
                    .map(|change| change.at.saturating_sub(window.to));
                let still_unready_at_heal = !ready_at(window.to);
                if window.fault.unready_reason().is_some() {
                    let detected = first_unready.is_some_and(|after| after <= DETECTION_LIMIT);
                    // Seen: it counts, whatever else happened; not seen while
                    // its process was down or starting: nothing to judge.
                    evaluated = detected || !restarted;
                    undetected = evaluated && !detected;
                }
                if still_unready_at_heal {
                    unrecovered = back.is_none_or(|after| after > RECOVERY_LIMIT);
                }
                let _ = write!(
                    note,
                    "{instance}: {}; {}",
                    match first_unready {
                        Some(after) => format!(
                            "not ready ({}) after {:.1} s",
                            window.fault.unready_reason().unwrap_or_default(),
                            after.as_secs_f64()
                        ),
                        None if window.fault.unready_reason().is_some() && restarted => {
                            "killed and started again into the fault (not evaluated)".to_owned()
                        }
                        None if window.fault.unready_reason().is_some() => {
                            "NOT reported not ready for it".to_owned()
                        }
                        None if ready_at(window.from)
                            && !unready.iter().any(|change| change.instance == instance) =>
                        {
                            "stayed ready".to_owned()
                        }
                        None => "not ready at times (other causes)".to_owned(),
                    },
                    match (still_unready_at_heal, back) {
                        (false, _) => "ready at the heal".to_owned(),
                        (true, Some(after)) =>
                            format!("ready {:.1} s after the heal", after.as_secs_f64()),
                        (true, None) => "NOT ready again".to_owned(),
                    }
                );
            } else if readiness.is_empty() {
                note.push_str("every instance stayed ready");
            } else {
                let _ = write!(
                    note,
                    "not ready: {}",
                    readiness.keys().copied().collect::<Vec<_>>().join(", ")
                );
            }
            let line = format!(
                "{:<44} {:<16} {:>6.1}-{:<6.1} {:>5} {:>5} {:>6} {:>6} {:>7}  {}",
                window.fault.name(),
                window.target,
                window.from.as_secs_f64(),
                window.to.as_secs_f64(),
                calls_in.len(),
                failed,
                millis(percentile(&took, 0.5)),
                millis(percentile(&took, 0.99)),
                millis(took.last().copied().unwrap_or_default()),
                note
            );
            Finding {
                line,
                evaluated,
                undetected,
                unrecovered,
            }
        })
        .collect()
}

/// The header of the findings table.
pub fn header() -> String {
    format!(
        "{:<44} {:<16} {:>13} {:>5} {:>5} {:>6} {:>6} {:>7}  {}",
        "fault (window, s after load start)",
        "target",
        "window",
        "calls",
        "!OK",
        "p50ms",
        "p99ms",
        "maxms",
        "readiness"
    )
}

/// Every readiness change of the run, one per line, for readiness.log.
pub fn render_changes(changes: &[Change]) -> String {
    let mut text = String::new();
    for change in changes {
        let _ = writeln!(
            text,
            "{:>8.1}s {:<16} {:<9} {}",
            change.at.as_secs_f64(),
            change.instance,
            if change.ready { "ready" } else { "NOT READY" },
            change.reason
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: f64, instance: &str, ready: bool, reason: &str) -> Change {
        Change {
            at: Duration::from_secs_f64(at),
            instance: instance.to_owned(),
            ready,
            reason: reason.to_owned(),
        }
    }

    fn window(fault: Fault, target: &str, from: f64, to: f64) -> Window {
        Window {
            fault,
            target: target.to_owned(),
            from: Duration::from_secs_f64(from),
            to: Duration::from_secs_f64(to),
        }
    }

    const PARTITION: Fault = Fault::PartitionOrderApiFromPostgres;

    #[test]
    fn a_partition_counts_as_reported_only_for_its_own_reason() {
        let windows = [window(PARTITION, "order-api-1", 10.0, 30.0)];
        let reported = [
            change(0.0, "order-api-1", true, "ready"),
            change(
                13.5,
                "order-api-1",
                false,
                "not ready: database: write probe timed out",
            ),
            change(31.0, "order-api-1", true, "ready"),
        ];
        let finding = &findings(&windows, &[], &reported)[0];
        assert!(finding.evaluated && !finding.undetected && !finding.unrecovered);

        let other_reason = [
            change(0.0, "order-api-1", true, "ready"),
            change(
                13.5,
                "order-api-1",
                false,
                "not ready: consumer x: partitions revoked",
            ),
            change(31.0, "order-api-1", true, "ready"),
        ];
        let finding = &findings(&windows, &[], &other_reason)[0];
        assert!(finding.evaluated && finding.undetected);

        let never = [change(0.0, "order-api-1", true, "ready")];
        assert!(findings(&windows, &[], &never)[0].undetected);
    }

    #[test]
    fn an_instance_started_again_into_the_fault_is_not_judged_and_must_still_recover() {
        let windows = [
            window(Fault::KillOrderApi, "order-api-1", 9.0, 10.0),
            window(PARTITION, "order-api-1", 10.0, 30.0),
        ];
        let silent = [
            change(0.0, "order-api-1", true, "ready"),
            change(9.1, "order-api-1", false, "no answer within 2 s"),
            change(31.0, "order-api-1", true, "ready"),
        ];
        let finding = &findings(&windows, &[], &silent)[1];
        assert!(!finding.evaluated && !finding.undetected && !finding.unrecovered);

        let stuck = [
            change(0.0, "order-api-1", true, "ready"),
            change(9.1, "order-api-1", false, "no answer within 2 s"),
            change(95.0, "order-api-1", true, "ready"),
        ];
        assert!(findings(&windows, &[], &stuck)[1].unrecovered);
    }
}
