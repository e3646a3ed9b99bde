//! User-interactive authentication sessions: which stages a session has completed.
//!
//! User-interactive-auth sessions, in memory.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::util;

/// Sessions live in memory: a restart only makes a client start its UIA flow again.
#[derive(Default)]
pub struct Uiaa {
    sessions: Mutex<HashMap<String, Vec<String>>>,
}

impl Uiaa {
    /// Starts a session.
    pub fn create(&self) -> String {
        let session = util::random_string(24);
        let mut sessions = self.sessions.lock();
        if sessions.len() > 100_000 {
            sessions.clear();
        }
        sessions.insert(session.clone(), Vec::new());
        session
    }

    /// Whether a session exists.
    pub fn exists(&self, session: &str) -> bool {
        self.sessions.lock().contains_key(session)
    }

    /// Stages a session has completed.
    pub fn completed(&self, session: &str) -> Vec<String> {
        self.sessions
            .lock()
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    /// Records a completed stage.
    pub fn complete(&self, session: &str, stage: &str) {
        if let Some(stages) = self.sessions.lock().get_mut(session) {
            if !stages.iter().any(|done| done == stage) {
                stages.push(stage.to_owned());
            }
        }
    }

    /// Ends a session once its flow succeeded.
    pub fn finish(&self, session: &str) {
        self.sessions.lock().remove(session);
    }
}
