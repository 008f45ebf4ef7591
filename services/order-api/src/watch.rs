//! Fan-out of order status changes to WatchOrder streams.
//!
//! One `LISTEN order_status` connection per process (the channel is notified
//! by the order API itself when it records a payment outcome, see
//! [`crate::repository::record_payment`]), and one `tokio::sync::watch` channel per watched
//! order: a status change wakes only the streams of that order, so hundreds of
//! watchers cost one idle task each and no polling. When the listener
//! connection is lost, every watcher is woken to re-read its order, since
//! notifications may have been missed in between.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foodorder_runtime::backoff::Backoff;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel notified, at commit, when an order's status changes.
pub const ORDER_STATUS_CHANNEL: &str = "order_status";

type Watchers = HashMap<Uuid, watch::Sender<u64>>;

/// Hands out per-order change signals.
#[derive(Clone, Default)]
pub struct OrderWatchHub {
    watchers: Arc<Mutex<Watchers>>,
}

/// A subscription to one order's changes; unsubscribes when dropped.
pub struct OrderSubscription {
    hub: OrderWatchHub,
    order_id: Uuid,
    /// Taken only when the subscription is dropped (see `Drop`).
    receiver: Option<watch::Receiver<u64>>,
}

impl OrderSubscription {
    /// Waits for the next change signal (it may be spurious: re-read and compare).
    pub async fn changed(&mut self) {
        let changed = match self.receiver.as_mut() {
            Some(receiver) => receiver.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for OrderSubscription {
    /// The last subscription of an order removes its entry. The receiver is
    /// dropped under the hub's lock before the count is read: read with the
    /// receiver still alive, two subscriptions dropped at once could each
    /// see the other and both leave the entry behind for good. Subscribing
    /// takes the same lock, so the count cannot change in between.
    fn drop(&mut self) {
        let mut watchers = self.hub.lock();
        drop(self.receiver.take());
        if watchers
            .get(&self.order_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            watchers.remove(&self.order_id);
        }
    }
}

impl OrderWatchHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribes to changes of `order_id`.
    pub fn subscribe(&self, order_id: Uuid) -> OrderSubscription {
        let receiver = self
            .lock()
            .entry(order_id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        OrderSubscription {
            hub: self.clone(),
            order_id,
            receiver: Some(receiver),
        }
    }

    /// Number of orders with at least one watcher.
    pub fn watched_orders(&self) -> usize {
        self.lock().len()
    }

    fn notify(&self, order_id: Uuid) {
        if let Some(sender) = self.lock().get(&order_id) {
            sender.send_modify(|version| *version += 1);
        }
    }

    fn notify_all(&self) {
        for sender in self.lock().values() {
            sender.send_modify(|version| *version += 1);
        }
    }

    /// Listens for status changes until `shutdown`, reconnecting with back-off.
    pub async fn run_listener(self, pool: PgPool, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // A database that does not answer must not hold the listener (nor
        // the shutdown) in the connect or the LISTEN.
        let bound = foodorder_runtime::db::statement_wait_bound(&pool);
        while !shutdown.is_cancelled() {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(ORDER_STATUS_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = tokio::time::timeout(bound, listener) => connected,
            };
            let mut listener = match connected {
                Ok(Ok(listener)) => listener,
                failed => {
                    let error = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => format!("the database did not answer within {bound:?}"),
                    };
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "order status listener failed to connect");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            backoff.reset();
            // Changes may have happened while no listener was connected.
            self.notify_all();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => match notification.payload().parse::<Uuid>() {
                            Ok(order_id) => self.notify(order_id),
                            Err(_) => tracing::warn!(payload = notification.payload(), "unexpected order status notification"),
                        },
                        Ok(None) => {
                            tracing::warn!("order status listener lost its connection, reconnecting");
                            self.notify_all();
                        }
                        Err(error) => {
                            tracing::warn!(%error, "order status listener failed, reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_only_the_watchers_of_the_changed_order() {
        let hub = OrderWatchHub::default();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let mut watcher_one = hub.subscribe(first);
        let mut watcher_two = hub.subscribe(second);
        hub.notify(first);
        tokio::time::timeout(Duration::from_secs(1), watcher_one.changed())
            .await
            .expect("first woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watcher_two.changed())
                .await
                .is_err()
        );
        assert_eq!(hub.watched_orders(), 2);
        drop(watcher_one);
        assert_eq!(hub.watched_orders(), 1);
        drop(watcher_two);
        assert_eq!(hub.watched_orders(), 0);
    }

    #[tokio::test]
    async fn entry_stays_while_another_watcher_of_the_same_order_lives() {
        let hub = OrderWatchHub::default();
        let order = Uuid::new_v4();
        let first = hub.subscribe(order);
        let mut second = hub.subscribe(order);
        drop(first);
        assert_eq!(hub.watched_orders(), 1);
        hub.notify(order);
        tokio::time::timeout(Duration::from_secs(1), second.changed())
            .await
            .expect("second woken");
    }

    /// Two watchers of one order dropped at the same moment, over and over on
    /// two threads: the last one out always removes the order's entry (the
    /// count is read once the dropping watcher's own receiver is gone, under
    /// the lock that subscribing takes too), so the hub never keeps an entry
    /// for an order nobody watches.
    #[test]
    fn watchers_dropped_at_once_leave_no_entry_behind() {
        const ROUNDS: usize = 20_000;
        let hub = OrderWatchHub::default();
        let start = std::sync::Arc::new(std::sync::Barrier::new(3));
        let done = std::sync::Arc::new(std::sync::Barrier::new(3));
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (sender, receiver) = std::sync::mpsc::channel::<OrderSubscription>();
            let (start, done) = (start.clone(), done.clone());
            senders.push(sender);
            threads.push(std::thread::spawn(move || {
                for subscription in receiver {
                    start.wait();
                    drop(subscription);
                    done.wait();
                }
            }));
        }
        let mut left_behind = 0;
        for _ in 0..ROUNDS {
            let order = Uuid::new_v4();
            for sender in &senders {
                sender.send(hub.subscribe(order)).unwrap();
            }
            start.wait();
            done.wait();
            if hub.watched_orders() != 0 {
                left_behind += 1;
                hub.lock().clear();
            }
        }
        drop(senders);
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(
            left_behind, 0,
            "entries left behind in {left_behind} of {ROUNDS} rounds"
        );
    }
}
