//! Same-key ordering: records with the same key are handled one after
//! another, in the order they were read.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Serialises handling of messages with the same key, in the order they were
/// read. A message's place in its key's line is taken in the loop, before its
/// task is spawned, so tasks that happen to start in another order still run
/// in offset order.
#[derive(Clone, Default)]
pub(super) struct KeyQueues(Arc<Mutex<HashMap<Vec<u8>, KeyTail>>>);

/// The last message queued for a key: its ticket, and what its successor waits on.
struct KeyTail {
    ticket: u64,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// A message's place in its key's line.
pub(super) struct KeyTurn {
    key: Vec<u8>,
    ticket: u64,
    /// Completes when the previous message with this key is done (or abandoned).
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped when this message is done, which lets the next one go.
    done: tokio::sync::oneshot::Sender<()>,
}

impl KeyQueues {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, KeyTail>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next place in `key`'s line (none for a keyless message).
    pub(super) fn enqueue(&self, key: Option<&[u8]>, ticket: u64) -> Option<KeyTurn> {
        let key = key?.to_vec();
        let (done, waiter) = tokio::sync::oneshot::channel();
        let previous = self
            .lock()
            .insert(
                key.clone(),
                KeyTail {
                    ticket,
                    done: waiter,
                },
            )
            .map(|tail| tail.done);
        Some(KeyTurn {
            key,
            ticket,
            previous,
            done,
        })
    }

    /// Waits for the turn, runs `work`, then lets the next message go.
    pub(super) async fn run<T>(&self, turn: Option<KeyTurn>, work: impl Future<Output = T>) -> T {
        let Some(turn) = turn else { return work.await };
        if let Some(previous) = turn.previous {
            // An error means the previous message's task ended without signalling: it is done too.
            let _ = previous.await;
        }
        let result = work.await;
        let mut map = self.lock();
        // Nobody queued behind us: drop the key's entry.
        if map
            .get(&turn.key)
            .is_some_and(|tail| tail.ticket == turn.ticket)
        {
            map.remove(&turn.key);
        }
        drop(turn.done);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_runs_one_at_a_time_in_the_order_read() {
        let queues = KeyQueues::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Places are taken in reading order 1..=8; the tasks then start in reverse.
        let turns: Vec<_> = (1..=8_u64)
            .map(|ticket| (ticket, queues.enqueue(Some(b"order-1"), ticket)))
            .collect();
        let mut handles = Vec::new();
        for (ticket, turn) in turns.into_iter().rev() {
            let (queues, order, active, max_seen) = (
                queues.clone(),
                order.clone(),
                active.clone(),
                max_seen.clone(),
            );
            handles.push(tokio::spawn(async move {
                queues
                    .run(turn, async {
                        let now = active.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        order.lock().unwrap().push(ticket);
                        active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    })
                    .await;
            }));
            tokio::task::yield_now().await;
        }
        for handle in handles {
            handle.await.unwrap();
        }
        assert_eq!(max_seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(*order.lock().unwrap(), (1..=8).collect::<Vec<_>>());
        assert!(queues.lock().is_empty(), "entries are dropped when idle");
    }

    #[tokio::test]
    async fn other_keys_and_keyless_messages_do_not_wait() {
        let queues = KeyQueues::default();
        let blocked = queues.enqueue(Some(b"a"), 1);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let queues = queues.clone();
            async move { queues.run(blocked, async { wait.await.ok() }).await }
        });
        let other = queues.enqueue(Some(b"b"), 2);
        queues.run(other, async {}).await;
        queues.run(queues.enqueue(None, 3), async {}).await;
        release.send(()).unwrap();
        first.await.unwrap();
    }
}
