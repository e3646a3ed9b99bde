//! One appservice's registration (spec v1.19, "Registration"): parsed from YAML, checked, and
//! compiled once: each namespace kind (users, aliases, rooms) becomes one `RegexSet` for every
//! regex and one for the exclusive ones, so a match against any number of regexes is one pass.

use regex::RegexSet;
use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    crypto,
    error::{Error, Result},
};

/// A registration as an admin writes it (the spec's YAML keys; unknown keys are ignored).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Registration {
    pub id: String,
    /// Where the appservice listens; `None` (or `null`) for one that receives nothing.
    #[serde(default)]
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    #[serde(default)]
    pub namespaces: Namespaces,
    /// Whether its requests are rate-limited; `false` exempts them.
    #[serde(default)]
    pub rate_limited: Option<bool>,
    #[serde(default)]
    pub protocols: Option<Vec<String>>,
    /// MSC2409: typing, receipts and presence in transactions, under `ephemeral`.
    #[serde(default)]
    pub receive_ephemeral: bool,
    /// MSC2409's unstable name: the same under `de.sorunome.msc2409.ephemeral`.
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    pub push_ephemeral: bool,
    /// MSC3202: device list changes, one-time key counts and unused fallback key types of its
    /// users' devices in transactions; its exclusive users' to-device messages reach it only
    /// through transactions.
    #[serde(default, rename = "org.matrix.msc3202")]
    pub msc3202: bool,
}

/// The three namespace lists.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Namespaces {
    #[serde(default)]
    pub users: Vec<Namespace>,
    #[serde(default)]
    pub aliases: Vec<Namespace>,
    #[serde(default)]
    pub rooms: Vec<Namespace>,
}

/// One namespace: a regex and whether the appservice claims it alone.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Namespace {
    #[serde(default)]
    pub exclusive: bool,
    pub regex: String,
}

/// One kind of namespace compiled: every regex, and the exclusive ones.
#[derive(Debug)]
pub struct NamespaceSet {
    all: RegexSet,
    exclusive: RegexSet,
}

impl NamespaceSet {
    fn compile(kind: &str, namespaces: &[Namespace]) -> Result<Self> {
        let compile = |exclusive_only: bool| {
            RegexSet::new(
                namespaces
                    .iter()
                    .filter(|namespace| namespace.exclusive || !exclusive_only)
                    .map(|namespace| namespace.regex.as_str()),
            )
            .map_err(|error| Error::Config(format!("invalid {kind} namespace regex: {error}")))
        };
        Ok(Self {
            all: compile(false)?,
            exclusive: compile(true)?,
        })
    }

    /// Whether any regex matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.all.is_match(text)
    }

    /// Whether an exclusive regex matches.
    pub fn is_exclusive_match(&self, text: &str) -> bool {
        self.exclusive.is_match(text)
    }
}

/// A checked registration with its namespaces compiled.
#[derive(Debug)]
pub struct Appservice {
    pub registration: Registration,
    /// `@sender_localpart:server`, the appservice's own user.
    pub sender: OwnedUserId,
    pub users: NamespaceSet,
    pub aliases: NamespaceSet,
    pub rooms: NamespaceSet,
    /// SHA-256 of `as_token`: requests are matched on it, never on the token itself.
    pub(super) as_token_hash: [u8; 32],
}

impl Appservice {
    /// Checks and compiles a registration: an empty id or token, a bad sender localpart, a
    /// URL that is not `http(s)`, or a regex that does not compile is a `Config` error.
    pub fn compile(registration: Registration, server_name: &ServerName) -> Result<Self> {
        let invalid = |what: &str| Error::Config(format!("invalid registration: {what}"));
        if registration.id.trim().is_empty() {
            return Err(invalid("empty id"));
        }
        if registration.as_token.is_empty() || registration.hs_token.is_empty() {
            return Err(invalid("empty as_token or hs_token"));
        }
        if registration.as_token == registration.hs_token {
            return Err(invalid("as_token and hs_token are the same"));
        }
        if let Some(url) = &registration.url {
            let parsed = url::Url::parse(url).map_err(|_| invalid("url is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid("url is not http or https"));
            }
        }
        let sender = UserId::parse_with_server_name(
            registration.sender_localpart.to_lowercase(),
            server_name,
        )
        .ok()
        .filter(|sender| sender.validate_strict().is_ok())
        .ok_or_else(|| invalid("sender_localpart is not a valid localpart"))?;
        let namespaces = &registration.namespaces;
        Ok(Self {
            users: NamespaceSet::compile("users", &namespaces.users)?,
            aliases: NamespaceSet::compile("aliases", &namespaces.aliases)?,
            rooms: NamespaceSet::compile("rooms", &namespaces.rooms)?,
            as_token_hash: crypto::token_hash(&registration.as_token),
            sender,
            registration,
        })
    }

    /// The registration's id.
    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether `user_id` is the appservice's sender or in its user namespaces: the users it may
    /// act as.
    pub fn is_user_match(&self, user_id: &UserId) -> bool {
        user_id == self.sender || self.users.is_match(user_id.as_str())
    }

    /// Whether `token` is this appservice's `hs_token`, compared in constant time.
    pub fn is_hs_token(&self, token: &str) -> bool {
        crypto::token_hash(token) == crypto::token_hash(&self.registration.hs_token)
    }

    /// Whether it asked for ephemeral events (MSC2409), by either name.
    pub fn wants_ephemeral(&self) -> bool {
        self.registration.url.is_some()
            && (self.registration.receive_ephemeral || self.registration.push_ephemeral)
    }

    /// Whether it asked for the MSC3202 transaction extensions.
    pub fn wants_device_extensions(&self) -> bool {
        self.registration.url.is_some() && self.registration.msc3202
    }

    /// Whether its requests skip the rate limits (`rate_limited: false`).
    pub fn is_exempt_from_rate_limits(&self) -> bool {
        self.registration.rate_limited == Some(false)
    }
}

/// Parses a registration from YAML (JSON is YAML too).
pub fn parse(text: &str) -> Result<Registration> {
    serde_yaml::from_str(text)
        .map_err(|error| Error::Config(format!("invalid registration YAML: {error}")))
}

#[cfg(test)]
mod tests {
    use ruma::{server_name, user_id};

    use super::{parse, Appservice};

    const BRIDGE: &str = r#"
id: whatsapp
url: http://127.0.0.1:29318
as_token: secret-as
hs_token: secret-hs
sender_localpart: whatsappbot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: '^@whatsapp_.*:example\.org$'
    - exclusive: false
      regex: '^@shared_.*:example\.org$'
  aliases:
    - exclusive: true
      regex: '^#whatsapp_.*:example\.org$'
"#;

    #[test]
    fn a_registration_compiles_its_namespaces_into_sets() {
        let appservice =
            Appservice::compile(parse(BRIDGE).unwrap(), server_name!("example.org")).unwrap();
        assert_eq!(appservice.sender, user_id!("@whatsappbot:example.org"));
        assert!(appservice.is_user_match(user_id!("@whatsapp_123:example.org")));
        assert!(appservice.is_user_match(user_id!("@shared_1:example.org")));
        assert!(appservice.is_user_match(user_id!("@whatsappbot:example.org")));
        assert!(!appservice.is_user_match(user_id!("@alice:example.org")));
        assert!(appservice
            .users
            .is_exclusive_match("@whatsapp_1:example.org"));
        assert!(!appservice.users.is_exclusive_match("@shared_1:example.org"));
        assert!(appservice
            .aliases
            .is_exclusive_match("#whatsapp_x:example.org"));
        assert!(!appservice.rooms.is_match("!any:example.org"));
        assert!(appservice.is_exempt_from_rate_limits());
        assert!(appservice.is_hs_token("secret-hs"));
        assert!(!appservice.is_hs_token("secret-as"));
    }

    #[test]
    fn bad_registrations_are_refused_with_the_reason() {
        let server = server_name!("example.org");
        let check = |yaml: String, reason: &str| {
            let error = parse(&yaml)
                .and_then(|registration| Appservice::compile(registration, server))
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{error} does not name {reason}");
        };
        check(
            BRIDGE.replace("'^@whatsapp_", "'^@whatsapp_(["),
            "users namespace",
        );
        check(BRIDGE.replace("id: whatsapp", "id: ''"), "empty id");
        check(BRIDGE.replace("secret-hs", "secret-as"), "the same");
        check(BRIDGE.replace("http://", "ftp://"), "not http");
        check(
            BRIDGE.replace("whatsappbot", "Not Valid!"),
            "sender_localpart",
        );
        check("id: [".to_owned(), "YAML");
    }
}
