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
    /// The day and the users already recorded that day; held while a day's record is written,
    /// which serialises every writer of the `LastActive` day counters.
    today: Mutex<(u32, HashSet<OwnedUserId>)>,
}

impl Activity {
    pub(super) fn new(counters: Counters) -> Self {
        Self {
            counters,
            today: Mutex::new((0, HashSet::new())),
        }
    }

    /// Records that a local user made an authenticated request now.
    pub fn record(&self, user_id: &UserId) -> Result<()> {
        self.record_on(user_id, day_of(util::now_millis()))
    }

    /// Records activity of a user on `day`: the user moves from the count of its previous last
    /// active day to the count of `day`, in one batch.
    pub fn record_on(&self, user_id: &UserId, day: u32) -> Result<()> {
        let mut today = self.today.lock();
        if today.0 != day {
            *today = (day, HashSet::new());
        }
        if today.1.contains(user_id) {
            return Ok(());
        }
        let previous = self.counters.get_last_active(user_id.as_bytes())?;
        if previous.is_some_and(|previous| previous >= day) {
            today.1.insert(user_id.to_owned());
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
        today.1.insert(user_id.to_owned());
        Ok(())
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
}
