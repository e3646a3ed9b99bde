//! Wakes long-polling `/sync` requests: one watch channel per room and per user.
//!
//! One watch channel per room and per user; `commit` wakes the room, membership changes wake the target user, typing changes and public receipts wake the room, a presence change wakes the user and each room they are joined to, private receipts and account data wake the user, and `/sync` waits on its user's topics.

use std::{collections::HashMap, future::Future, pin::Pin};

use parking_lot::Mutex;
use tokio::sync::watch;

/// What a sync request can wait for.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Topic {
    /// Anything new in a room's timeline, state or ephemeral data.
    Room(String),
    /// Anything addressed to a user: invites, membership, account data.
    User(String),
}

/// Channels keyed by [`Topic`]; a channel is created on first use and kept.
#[derive(Default)]
pub struct Notifier {
    channels: Mutex<HashMap<Topic, watch::Sender<u64>>>,
}

impl Notifier {
    /// Wakes everyone waiting on `topic`.
    pub fn wake(&self, topic: Topic) {
        let channels = self.channels.lock();
        if let Some(sender) = channels.get(&topic) {
            sender.send_modify(|version| *version += 1);
        }
    }

    /// Subscribes to `topics`: the returned [`Waiter`] completes when any of them is woken
    /// after this call.
    pub fn subscribe(&self, topics: impl IntoIterator<Item = Topic>) -> Waiter {
        let mut waiter = Waiter {
            receivers: Vec::new(),
        };
        self.add(&mut waiter, topics);
        waiter
    }

    /// Adds more topics to a waiter; wakes before this call do not count for them.
    pub fn add(&self, waiter: &mut Waiter, topics: impl IntoIterator<Item = Topic>) {
        let mut channels = self.channels.lock();
        waiter.receivers.extend(topics.into_iter().map(|topic| {
            channels
                .entry(topic)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        }));
    }
}

/// Watches a set of topics; see [`Notifier::subscribe`].
pub struct Waiter {
    receivers: Vec<watch::Receiver<u64>>,
}

impl Waiter {
    /// Completes when any watched topic is woken (never, if there are none).
    pub fn wait(mut self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if self.receivers.is_empty() {
                return std::future::pending().await;
            }
            let changes = self
                .receivers
                .iter_mut()
                .map(|receiver| Box::pin(receiver.changed()));
            let _ = futures_util::future::select_all(changes).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_only_for_their_topics() {
        let notifier = Notifier::default();
        let mut waiter = notifier.subscribe([Topic::Room("!a".into())]);
        notifier.add(&mut waiter, [Topic::User("@u".into())]);
        let wait = waiter.wait();
        notifier.wake(Topic::Room("!other".into()));
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), wait).await;
        assert!(pending.is_err(), "woken by an unrelated topic");
        let wait = notifier.subscribe([Topic::User("@u".into())]).wait();
        notifier.wake(Topic::User("@u".into()));
        tokio::time::timeout(std::time::Duration::from_secs(1), wait)
            .await
            .expect("woken");
    }
}
