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
    /// SIGKILL the notification service, start it again after a pause.
    KillNotification,
    /// SIGKILL the order API, start it again after a second.
    KillOrderApi,
    /// SIGKILL the broker, start it again on the same port with the same data.
    KillBroker,
    /// Immediate shutdown of PostgreSQL (crash recovery at the start), on the same port.
    RestartPostgres,
    /// SIGKILL the second payment instance and leave it dead.
    KillPayment2ForGood,
    /// Copy records already on both event topics back onto them.
    Duplicate,
    /// Produce hostile records to both event topics.
    Hostile,
}

impl Fault {
    /// Every fault class, in the order of the final table.
    pub const ALL: [Fault; 8] = [
        Fault::KillPayment,
        Fault::KillNotification,
        Fault::KillOrderApi,
        Fault::KillBroker,
        Fault::RestartPostgres,
        Fault::KillPayment2ForGood,
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
            Fault::RestartPostgres => "restart-postgres",
            Fault::KillPayment2ForGood => "kill-payment-2-for-good",
            Fault::Duplicate => "duplicate",
            Fault::Hostile => "hostile",
        }
    }
}

/// How long the load runs and how many faults it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 45 s of load, each fault class once or twice.
    Short,
    /// 150 s of load: payment killed 5 times, notification 3, order API 3, broker 2.
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
    pub fn seconds(self) -> u64 {
        match self {
            Mode::Short => 45,
            Mode::Full => 150,
        }
    }

    /// How many times `fault` is injected.
    pub fn count(self, fault: Fault) -> usize {
        match (self, fault) {
            (Mode::Full, Fault::KillPayment) => 5,
            (Mode::Full, Fault::KillNotification | Fault::KillOrderApi) => 3,
            (Mode::Full, Fault::KillBroker) => 2,
            (Mode::Short, Fault::KillPayment) => 2,
            (Mode::Short, Fault::KillNotification | Fault::KillOrderApi | Fault::KillBroker) => 1,
            (_, Fault::RestartPostgres)
            | (_, Fault::KillPayment2ForGood)
            | (_, Fault::Duplicate)
            | (_, Fault::Hostile) => 1,
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
    pub fn new(seed: u64, mode: Mode) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let seconds = mode.seconds();
        let mut events = Vec::new();
        for fault in Fault::ALL {
            for _ in 0..mode.count(fault) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule() {
        let (mut first, mut second) = (
            Schedule::new(4242, Mode::Full),
            Schedule::new(4242, Mode::Full),
        );
        assert_eq!(first.events, second.events);
        assert_eq!(first.restart_pause(), second.restart_pause());
        assert_ne!(first.events, Schedule::new(4243, Mode::Full).events);
    }

    #[test]
    fn every_fault_is_scheduled_as_often_as_its_mode_says_inside_the_load() {
        for mode in [Mode::Short, Mode::Full] {
            for seed in 0..50 {
                let schedule = Schedule::new(seed, mode);
                for fault in Fault::ALL {
                    let count = schedule.events.iter().filter(|(_, f)| *f == fault).count();
                    assert_eq!(count, mode.count(fault), "{mode:?} {fault:?}");
                }
                assert!(schedule.events.is_sorted_by_key(|(at, _)| *at));
                assert!(
                    schedule
                        .events
                        .iter()
                        .all(|(at, _)| (5..mode.seconds() - 5).contains(at))
                );
            }
        }
        let total = |mode: Mode| {
            Fault::ALL
                .iter()
                .map(|fault| mode.count(*fault))
                .sum::<usize>()
        };
        assert_eq!((total(Mode::Short), total(Mode::Full)), (9, 17));
    }
}
