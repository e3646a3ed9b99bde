//! Who was active when: each local user's last active day, and per day how many users were last
//! active then, so that "active in the last N days" is a sum over N day counters.

use std::collections::HashSet;

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};

use super::counters::{day_of, Counters, DayCounter};
use crate::{error::Result, store::Batch, util};

/// Records activity: at most one write per user and day, the rest answered from memory.
pub struct Activity {
    counters: Counters,
    /// The day and the users already recorded that day; held only to look or insert, so that a
    /// request of a user already recorded never waits for another user's write.
    today: Mutex<(u32, HashSet<OwnedUserId>)>,
    /// Held while a day's record is read, changed and written (with its fsync under
    /// `sync_writes`), which serialises every writer of the `LastActive` day counters.
    writing: Mutex<()>,
}

impl Activity {
    pub(super) fn new(counters: Counters) -> Self {
        Self {
            counters,
            today: Mutex::new((0, HashSet::new())),
            writing: Mutex::new(()),
        }
    }

    /// Records that a local user made an authenticated request now.
    pub fn record(&self, user_id: &UserId) -> Result<()> {
        self.record_on(user_id, day_of(util::now_millis()))
    }

    /// Records activity of a user on `day`: the user moves from the count of its previous last
    /// active day to the count of `day`, in one batch.
    pub fn record_on(&self, user_id: &UserId, day: u32) -> Result<()> {
        if self.is_recorded(user_id, day) {
            return Ok(());
        }
        let _writing = self.writing.lock();
        // Another request of the same user may have written the record meanwhile.
        if self.is_recorded(user_id, day) {
            return Ok(());
        }
        let previous = self.counters.get_last_active(user_id.as_bytes())?;
        if previous.is_some_and(|previous| previous >= day) {
            self.mark_recorded(user_id, day);
            return Ok(());
        }
        let mut batch = Batch::default();
        if let Some(previous) = previous {
            self.counters
                .add_day_in_batch(DayCounter::LastActive, previous, -1, &mut batch)?;
        }
        self.counters
            .add_day_in_batch(DayCounter::LastActive, day, 1, &mut batch)?;
        self.counters
            .set_last_active_in_batch(user_id.as_bytes(), day, &mut batch);
        self.counters.db().write(batch)?;
        self.mark_recorded(user_id, day);
        Ok(())
    }

    /// Whether the user is known to be recorded on `day` (the memory moves on to a new day).
    fn is_recorded(&self, user_id: &UserId, day: u32) -> bool {
        let mut today = self.today.lock();
        if today.0 != day {
            *today = (day, HashSet::new());
        }
        today.1.contains(user_id)
    }

    fn mark_recorded(&self, user_id: &UserId, day: u32) {
        let mut today = self.today.lock();
        if today.0 == day {
            today.1.insert(user_id.to_owned());
        }
    }

    /// How many local users were active in the `days` days up to and including `today`.
    pub fn active_in(&self, today: u32, days: u32) -> Result<u64> {
        self.counters.sum_days(DayCounter::LastActive, today, days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;

    #[test]
    fn each_user_counts_once_on_its_last_active_day() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let activity = Activity::new(Counters::open(&db));
        let alice = <&UserId>::try_from("@alice:localhost").unwrap();
        let bob = <&UserId>::try_from("@bob:localhost").unwrap();
        let carol = <&UserId>::try_from("@carol:localhost").unwrap();
        activity.record_on(carol, 100).unwrap();
        activity.record_on(alice, 110).unwrap();
        activity.record_on(bob, 125).unwrap();
        activity.record_on(alice, 129).unwrap();
        activity.record_on(alice, 129).unwrap();
        // An older day after a newer one changes nothing.
        activity.record_on(bob, 120).unwrap();
        let check = |days, expected| assert_eq!(activity.active_in(129, days).unwrap(), expected);
        check(1, 1);
        check(5, 2);
        check(7, 2);
        check(30, 3);
        check(365, 3);
        // Counted from the tree alone, as after a restart.
        let reopened = Activity::new(Counters::open(&db));
        assert_eq!(reopened.active_in(129, 30).unwrap(), 3);
        reopened.record_on(carol, 130).unwrap();
        assert_eq!(reopened.active_in(130, 1).unwrap(), 1);
        assert_eq!(reopened.active_in(130, 30).unwrap(), 3);
    }

    #[test]
    fn a_recorded_user_never_waits_for_another_users_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let activity = std::sync::Arc::new(Activity::new(Counters::open(&db)));
        let alice = <&UserId>::try_from("@alice:localhost").unwrap().to_owned();
        activity.record_on(&alice, 100).unwrap();
        // Another user's write is under way (its fsync may take long).
        let _writing = activity.writing.lock();
        let (done, finished) = std::sync::mpsc::channel();
        let recorder = std::sync::Arc::clone(&activity);
        std::thread::spawn(move || {
            recorder.record_on(&alice, 100).unwrap();
            done.send(()).unwrap();
        });
        let waited = finished.recv_timeout(std::time::Duration::from_secs(10));
        assert!(waited.is_ok(), "alice's request waited for the write");
    }
}
