//! Giving freed heap memory back to the operating system once the listeners go quiet.
//!
//! glibc's `free` keeps freed memory in its arenas for reuse and returns only the top of an
//! arena, so after start-up (creating the trees of a new database makes millions of short-lived
//! allocations), a burst of requests or a flood of connections the resident size stays near
//! its peak. `malloc_trim(0)` hands every whole free page back. It holds the arena locks while it
//! walks them, so it runs only after `memory_trim_quiet_ms` without a new connection, a closed
//! one or a request head, and once per quiet spell.

use std::{sync::Arc, time::Duration};

use super::listener::Connections;

/// When to trim, from the listeners' activity counter read once per interval.
#[derive(Debug, Default)]
pub struct QuietSpells {
    /// The counter at the previous reading.
    last_seen: Option<u64>,
    /// The counter when memory was last trimmed.
    trimmed_at: Option<u64>,
}

impl QuietSpells {
    /// Takes one reading of the counter and says whether to trim now: when it has not moved
    /// since the previous reading and memory was not trimmed at this value yet.
    pub fn quiet_and_untrimmed(&mut self, activity: u64) -> bool {
        let quiet = self.last_seen == Some(activity);
        self.last_seen = Some(activity);
        if quiet && self.trimmed_at != Some(activity) {
            self.trimmed_at = Some(activity);
            return true;
        }
        false
    }
}

/// Reads `connections`' activity every `quiet` and trims the heap at the start of each quiet
/// spell, until `shutdown` completes; `quiet` of zero switches trimming off.
pub async fn run(
    connections: Arc<Connections>,
    quiet: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if quiet.is_zero() {
        return;
    }
    tokio::pin!(shutdown);
    let mut spells = QuietSpells::default();
    let mut ticks = tokio::time::interval(quiet);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut shutdown => return,
        }
        if spells.quiet_and_untrimmed(connections.activity()) {
            // On the blocking pool: the walk over the heap's free chunks takes its time.
            let _ = tokio::task::spawn_blocking(release_free_heap).await;
        }
    }
}

/// Returns the allocator's whole free pages to the operating system.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory that the allocator holds as free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_quiet_spell() {
        let mut spells = QuietSpells::default();
        let mut check = |activity: u64, expected: bool| {
            assert_eq!(
                spells.quiet_and_untrimmed(activity),
                expected,
                "at {activity}"
            );
        };
        // Start-up: the first interval without activity trims what building the services left.
        check(0, false);
        check(0, true);
        check(0, false);
        // Busy intervals do not trim; the first quiet one after them does, once.
        check(5, false);
        check(9, false);
        check(9, true);
        check(9, false);
        check(9, false);
        check(10, false);
        check(10, true);
    }
}
