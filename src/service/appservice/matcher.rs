//! The namespaces of every registered appservice compiled into one `RegexSet` per kind (users,
//! aliases, room IDs), so that finding the appservices interested in an event costs one pass
//! per ID looked at, whatever the number of appservices.

use regex::RegexSet;

use super::Appservice;

/// One kind of namespace across all appservices: the set, and the appservice each regex belongs
/// to.
#[derive(Debug)]
struct Combined {
    set: RegexSet,
    owners: Vec<usize>,
}

impl Combined {
    /// Compiles the regexes `patterns` gives for each appservice, in registry order.
    fn compile<'a>(
        appservices: impl Iterator<Item = &'a Appservice>,
        patterns: impl Fn(&'a Appservice) -> Vec<String>,
    ) -> Self {
        let mut owners = Vec::new();
        let mut regexes = Vec::new();
        for (index, appservice) in appservices.enumerate() {
            for pattern in patterns(appservice) {
                owners.push(index);
                regexes.push(pattern);
            }
        }
        // Every regex compiled on its own when its registration was loaded; a set of them only
        // fails on the size limit, and then matches nothing (never for a real deployment).
        let set = RegexSet::new(&regexes).unwrap_or_else(|error| {
            tracing::error!(%error, "the appservice namespaces do not fit in one set");
            RegexSet::empty()
        });
        Self { set, owners }
    }

    /// Marks in `hits` the appservices with a regex matching `text`.
    fn mark(&self, text: &str, hits: &mut [bool]) {
        if self.owners.is_empty() {
            return;
        }
        for index in self.set.matches(text).iter() {
            if let Some(hit) = self
                .owners
                .get(index)
                .and_then(|owner| hits.get_mut(*owner))
            {
                *hit = true;
            }
        }
    }
}

/// The combined namespaces of the registry's appservices, in its order.
#[derive(Debug)]
pub struct Matcher {
    users: Combined,
    aliases: Combined,
    rooms: Combined,
}

impl Default for Matcher {
    fn default() -> Self {
        Self::compile(&[])
    }
}

impl Matcher {
    /// Compiles the namespaces of `appservices`; each one's sender is a user regex of its own.
    pub fn compile(appservices: &[&Appservice]) -> Self {
        let namespace = |list: &[super::registration::Namespace]| {
            list.iter()
                .map(|namespace| namespace.regex.clone())
                .collect::<Vec<_>>()
        };
        let iter = || appservices.iter().copied();
        Self {
            users: Combined::compile(iter(), |appservice| {
                let mut patterns = namespace(&appservice.registration.namespaces.users);
                patterns.push(format!("^{}$", regex::escape(appservice.sender.as_str())));
                patterns
            }),
            aliases: Combined::compile(iter(), |appservice| {
                namespace(&appservice.registration.namespaces.aliases)
            }),
            rooms: Combined::compile(iter(), |appservice| {
                namespace(&appservice.registration.namespaces.rooms)
            }),
        }
    }

    /// Marks the appservices a user belongs to (sender or user namespace).
    pub fn mark_user(&self, user_id: &str, hits: &mut [bool]) {
        self.users.mark(user_id, hits);
    }

    /// Marks the appservices with an alias namespace matching `alias`.
    pub fn mark_alias(&self, alias: &str, hits: &mut [bool]) {
        self.aliases.mark(alias, hits);
    }

    /// Marks the appservices with a room namespace matching `room_id`.
    pub fn mark_room(&self, room_id: &str, hits: &mut [bool]) {
        self.rooms.mark(room_id, hits);
    }

    /// Whether any appservice has an alias namespace.
    pub fn has_aliases(&self) -> bool {
        !self.aliases.owners.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use ruma::server_name;

    use super::Matcher;
    use crate::service::appservice::{registration::parse, Appservice};

    fn appservice(id: &str, users: &str, rooms: &str) -> Appservice {
        let yaml = format!(
            "id: {id}\nurl: http://127.0.0.1:9\nas_token: as-{id}\nhs_token: hs-{id}\n\
             sender_localpart: {id}bot\nnamespaces:\n  users:\n    - regex: '{users}'\n\
             \x20 rooms:\n    - regex: '{rooms}'\n"
        );
        Appservice::compile(parse(&yaml).unwrap(), server_name!("example.org")).unwrap()
    }

    #[test]
    fn one_match_marks_every_appservice_whose_namespace_holds_the_id() {
        let first = appservice("first", "^@a_.*", "^!a");
        let second = appservice("second", "^@(a|b)_.*", "^!never");
        let third = appservice("third", "^@c_.*", "^!a");
        let matcher = Matcher::compile(&[&first, &second, &third]);
        let check = |mark: &dyn Fn(&mut [bool]), expected: [bool; 3]| {
            let mut hits = [false; 3];
            mark(&mut hits);
            assert_eq!(hits, expected);
        };
        check(
            &|hits| matcher.mark_user("@a_1:example.org", hits),
            [true, true, false],
        );
        check(
            &|hits| matcher.mark_user("@b_1:example.org", hits),
            [false, true, false],
        );
        // The sender is a user of its appservice without a namespace saying so.
        check(
            &|hits| matcher.mark_user("@thirdbot:example.org", hits),
            [false, false, true],
        );
        check(
            &|hits| matcher.mark_user("@thirdbotx:example.org", hits),
            [false; 3],
        );
        check(
            &|hits| matcher.mark_room("!abc:example.org", hits),
            [true, false, true],
        );
        check(
            &|hits| matcher.mark_alias("#a:example.org", hits),
            [false; 3],
        );
        assert!(!matcher.has_aliases());
    }
}
