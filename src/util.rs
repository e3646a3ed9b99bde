//! Small leaf helpers with no dependencies on other modules: random strings and clocks.

use rand::{distributions::Alphanumeric, Rng};

/// A random alphanumeric string of `length` characters from the OS-seeded thread RNG.
pub fn random_string(length: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_strings_have_the_length_and_differ() {
        let a = super::random_string(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, super::random_string(32));
        assert!(super::now_millis() > 1_600_000_000_000);
    }
}
