//! The seeded fault schedule: which faults a run injects, how many of each and
//! when (seconds after the load starts). Everything random about a run's faults
//! comes from one `StdRng` seeded with the run's seed, so that a seed replays
//! the same schedule: first the fault times, then the pauses between killing an
//! instance and starting it again, drawn as the faults happen.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fault class, in the order of the final table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the first payment instance, start it again after a pause.
    KillPayment,
    /// SIGKILL the (first) notification instance, start it again after a pause.
    KillNotification,
    /// SIGKILL the (first) order API, start it again after a second.
    KillOrderApi,
    /// SIGKILL a broker (in a cluster: a random node), start it again on the same port with the same data.
    KillBroker,
    /// Cluster: SIGKILL the active KRaft controller, start it again after a pause.
    KillController,
    /// Cluster: SIGKILL the leader of the busiest `order.placed` partition, start it again after a pause.
    KillPartitionLeader,
    /// Immediate shutdown of PostgreSQL (crash recovery at the start), on the same port.
    RestartPostgres,
    /// SIGKILL the second payment instance and leave it dead (single broker only).
    KillPayment2ForGood,
    /// Cluster: order-api-1's packets to PostgreSQL dropped for 20–30 s.
    PartitionOrderApiFromPostgres,
    /// Cluster: order-api-2's packets to the brokers dropped for 20–30 s.
    PartitionOrderApiFromBrokers,
    /// Cluster: payment-1's packets to the brokers dropped for 20–30 s.
    PartitionPaymentFromBrokers,
    /// Cluster: notification-1's packets to PostgreSQL dropped for 20–30 s.
    PartitionNotificationFromPostgres,
    /// Cluster: payment-2's PostgreSQL traffic delayed 200 ms ± 50 for 20–30 s.
    SlowPaymentPostgres,
    /// Cluster: notification-2's PostgreSQL traffic delayed 200 ms ± 50 for 20–30 s.
    SlowNotificationPostgres,
    /// Copy records already on both event topics back onto them.
    Duplicate,
    /// Produce hostile records to both event topics.
    Hostile,
}

impl Fault {
    /// Every fault class, in the order of the final table.
    pub const ALL: [Fault; 16] = [
        Fault::KillPayment,
        Fault::KillNotification,
        Fault::KillOrderApi,
        Fault::KillBroker,
        Fault::KillController,
        Fault::KillPartitionLeader,
        Fault::RestartPostgres,
        Fault::KillPayment2ForGood,
        Fault::PartitionOrderApiFromPostgres,
        Fault::PartitionOrderApiFromBrokers,
        Fault::PartitionPaymentFromBrokers,
        Fault::PartitionNotificationFromPostgres,
        Fault::SlowPaymentPostgres,
        Fault::SlowNotificationPostgres,
        Fault::Duplicate,
        Fault::Hostile,
    ];

    /// The name in the logs and the final table.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillPayment => "kill-payment",
            Fault::KillNotification => "kill-notification",
            Fault::KillOrderApi => "kill-order-api",
            Fault::KillBroker => "kill-broker",
            Fault::KillController => "kill-broker-active-controller",
            Fault::KillPartitionLeader => "kill-broker-leader-of-busiest-partition",
            Fault::RestartPostgres => "restart-postgres",
            Fault::KillPayment2ForGood => "kill-payment-2-for-good",
            Fault::PartitionOrderApiFromPostgres => "partition order-api-1 | postgres (drop)",
            Fault::PartitionOrderApiFromBrokers => "partition order-api-2 | brokers (drop)",
            Fault::PartitionPaymentFromBrokers => "partition payment-1 | brokers (drop)",
            Fault::PartitionNotificationFromPostgres => {
                "partition notification-1 | postgres (drop)"
            }
            Fault::SlowPaymentPostgres => "latency payment-2 > postgres 200±50ms",
            Fault::SlowNotificationPostgres => "latency notification-2 > postgres 200±50ms",
            Fault::Duplicate => "duplicate",
            Fault::Hostile => "hostile",
        }
    }

    /// The impaired instance, for the network faults.
    pub fn impaired(self) -> Option<&'static str> {
        match self {
            Fault::PartitionOrderApiFromPostgres => Some("order-api-1"),
            Fault::PartitionOrderApiFromBrokers => Some("order-api-2"),
            Fault::PartitionPaymentFromBrokers => Some("payment-1"),
            Fault::PartitionNotificationFromPostgres => Some("notification-1"),
            Fault::SlowPaymentPostgres => Some("payment-2"),
            Fault::SlowNotificationPostgres => Some("notification-2"),
            _ => None,
        }
    }

    /// The condition the impaired instance must report unmet during the
    /// fault (a word of its `/readyz` reason): a partition of a consumer from
    /// the brokers (`consumer`), or of an instance from PostgreSQL
    /// (`database`). The order API cut off from the brokers has none: its
    /// readiness follows PostgreSQL only, by design.
    pub fn unready_reason(self) -> Option<&'static str> {
        match self {
            Fault::PartitionOrderApiFromPostgres | Fault::PartitionNotificationFromPostgres => {
                Some("database")
            }
            Fault::PartitionPaymentFromBrokers => Some("consumer"),
            _ => None,
        }
    }
}

/// How long the load runs and how many faults it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 45 s of load (90 s in a cluster run), each fault class once or twice.
    Short,
    /// 150 s of load (180 s in a cluster run): payment killed 5 times, notification 3,
    /// order API 3, broker 2 (a cluster run: see [`Mode::count`]).
    Full,
}

impl Mode {
    /// `short` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Short => "short",
            Mode::Full => "full",
        }
    }

    /// Seconds of load.
    pub fn seconds(self, cluster: bool) -> u64 {
        match (self, cluster) {
            (Mode::Short, false) => 45,
            (Mode::Short, true) => 90,
            (Mode::Full, false) => 150,
            (Mode::Full, true) => 180,
        }
    }

    /// How many times `fault` is injected (single broker, or a cluster run).
    pub fn count(self, fault: Fault, cluster: bool) -> usize {
        let full = self == Mode::Full;
        match fault {
            Fault::KillPayment => match (full, cluster) {
                (true, false) => 5,
                (true, true) => 3,
                (false, _) => 2,
            },
            Fault::KillNotification | Fault::KillOrderApi => {
                if full {
                    if cluster { 2 } else { 3 }
                } else {
                    1
                }
            }
            Fault::KillBroker => match (full, cluster) {
                (true, false) => 2,
                (false, false) | (true, true) => 1,
                (false, true) => 0,
            },
            Fault::KillController | Fault::KillPartitionLeader => match (full, cluster) {
                (_, false) => 0,
                (true, true) => 2,
                (false, true) => 1,
            },
            Fault::KillPayment2ForGood => usize::from(!cluster),
            Fault::PartitionOrderApiFromPostgres
            | Fault::PartitionOrderApiFromBrokers
            | Fault::PartitionPaymentFromBrokers
            | Fault::PartitionNotificationFromPostgres
            | Fault::SlowPaymentPostgres
            | Fault::SlowNotificationPostgres => usize::from(cluster),
            Fault::RestartPostgres | Fault::Duplicate | Fault::Hostile => 1,
        }
    }

    /// The longest wait for quiescence once the load is done.
    pub fn quiescence_wait(self) -> Duration {
        match self {
            Mode::Short => Duration::from_secs(180),
            Mode::Full => Duration::from_secs(300),
        }
    }
}

/// The faults of one run, by time, and the generator of its restart pauses.
pub struct Schedule {
    /// (seconds after the load started, fault), sorted by time.
    pub events: Vec<(u64, Fault)>,
    rng: StdRng,
}

impl Schedule {
    /// The schedule of `seed` in `mode`: each fault at a time drawn uniformly
    /// from [5, seconds - 5), so that none falls on the load's first or last seconds.
    pub fn new(seed: u64, mode: Mode, cluster: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let seconds = mode.seconds(cluster);
        let mut events = Vec::new();
        for fault in Fault::ALL {
            for _ in 0..mode.count(fault, cluster) {
                events.push((rng.random_range(5..seconds - 5), fault));
            }
        }
        events.sort_by_key(|(at, _)| *at);
        Self { events, rng }
    }

    /// The pause between killing a consumer instance and starting it again: 1 or 2 s.
    pub fn restart_pause(&mut self) -> Duration {
        Duration::from_secs(self.rng.random_range(1..=2))
    }

    /// How long a network fault lasts: 20 to 30 s.
    pub fn impairment(&mut self) -> Duration {
        Duration::from_secs(self.rng.random_range(20..=30))
    }

    /// Which broker the plain `kill-broker` fault of a cluster run takes (index).
    pub fn any_of(&mut self, count: usize) -> usize {
        self.rng.random_range(0..count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule() {
        let (mut first, mut second) = (
            Schedule::new(4242, Mode::Full, true),
            Schedule::new(4242, Mode::Full, true),
        );
        assert_eq!(first.events, second.events);
        assert_eq!(first.restart_pause(), second.restart_pause());
        assert_eq!(first.impairment(), second.impairment());
        assert_ne!(first.events, Schedule::new(4243, Mode::Full, true).events);
    }

    #[test]
    fn every_fault_is_scheduled_as_often_as_its_mode_says_inside_the_load() {
        for (mode, cluster) in [
            (Mode::Short, false),
            (Mode::Full, false),
            (Mode::Short, true),
            (Mode::Full, true),
        ] {
            for seed in 0..50 {
                let schedule = Schedule::new(seed, mode, cluster);
                for fault in Fault::ALL {
                    let count = schedule.events.iter().filter(|(_, f)| *f == fault).count();
                    assert_eq!(count, mode.count(fault, cluster), "{mode:?} {fault:?}");
                }
                assert!(schedule.events.is_sorted_by_key(|(at, _)| *at));
                let seconds = mode.seconds(cluster);
                assert!(
                    schedule
                        .events
                        .iter()
                        .all(|(at, _)| (5..seconds - 5).contains(at))
                );
            }
        }
        let total = |mode: Mode, cluster| {
            Fault::ALL
                .iter()
                .map(|fault| mode.count(*fault, cluster))
                .sum::<usize>()
        };
        assert_eq!(
            (total(Mode::Short, false), total(Mode::Full, false)),
            (9, 17)
        );
        assert_eq!(
            (total(Mode::Short, true), total(Mode::Full, true)),
            (15, 21)
        );
    }
}
