//! Third-party networks (client-server API, "Third-party networks"): the protocols appservices
//! declare in their registrations (`protocols`), and the lookups of portal rooms and remote users
//! that clients make, passed on to those appservices (`/_matrix/app/v1/thirdparty/*`) and their
//! answers joined. An appservice that fails or times out is left out of the answer.

use futures_util::future::join_all;
use serde_json::{Map, Value};

use super::{sender, Appservice};
use crate::{
    error::{Error, Result},
    federation::encode,
    service::Services,
};

/// What a lookup finds: portal rooms (`location`) or remote users (`user`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Location,
    User,
}

impl Lookup {
    fn as_str(self) -> &'static str {
        match self {
            Lookup::Location => "location",
            Lookup::User => "user",
        }
    }
}

/// The appservices that declare `protocol` (every one with a URL that declares any, if `None`).
fn appservices_for(services: &Services, protocol: Option<&str>) -> Vec<std::sync::Arc<Appservice>> {
    services
        .appservices
        .registry()
        .appservices
        .iter()
        .map(|(appservice, _)| appservice)
        .filter(|appservice| appservice.registration.url.is_some())
        .filter(|appservice| {
            let declared = appservice
                .registration
                .protocols
                .as_deref()
                .unwrap_or_default();
            match protocol {
                Some(protocol) => declared.iter().any(|name| name == protocol),
                None => !declared.is_empty(),
            }
        })
        .cloned()
        .collect()
}

/// The description of `protocol` (`GET /thirdparty/protocol/{protocol}`): the first answer of
/// the appservices that declare it, with the `instances` of all of them. `M_NOT_FOUND` when no
/// appservice declares it or none answers.
pub async fn get_protocol(services: &Services, protocol: &str) -> Result<Value> {
    let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", encode(protocol));
    let appservices = appservices_for(services, Some(protocol));
    let answers =
        join_all(appservices.iter().map(|appservice| {
            sender::request(services, appservice, http::Method::GET, &path, None)
        }))
        .await;
    let mut merged: Option<Value> = None;
    for answer in answers.into_iter().filter_map(Result::ok) {
        let Value::Object(answer) = answer else {
            continue;
        };
        match &mut merged {
            None => merged = Some(Value::Object(answer)),
            Some(merged) => {
                let more = answer.get("instances").and_then(Value::as_array);
                if let Some(instances) = merged["instances"].as_array_mut() {
                    instances.extend(more.into_iter().flatten().cloned());
                }
            }
        }
    }
    merged.ok_or_else(|| Error::not_found(format!("no appservice serves protocol {protocol}")))
}

/// Every declared protocol with its description (`GET /thirdparty/protocols`); a protocol no
/// appservice answers for is left out.
pub async fn get_protocols(services: &Services) -> Result<Map<String, Value>> {
    let mut names: Vec<String> = appservices_for(services, None)
        .iter()
        .flat_map(|appservice| {
            appservice
                .registration
                .protocols
                .clone()
                .unwrap_or_default()
        })
        .collect();
    names.sort();
    names.dedup();
    let answers = join_all(names.iter().map(|name| get_protocol(services, name))).await;
    Ok(names
        .into_iter()
        .zip(answers)
        .filter_map(|(name, answer)| answer.ok().map(|answer| (name, answer)))
        .collect())
}

/// A lookup in one protocol (`GET /thirdparty/{location,user}/{protocol}` with the protocol's
/// fields as `query`) or by Matrix ID (`protocol` `None`: `?alias=` or `?userid=`), asked of
/// every appservice that declares the protocol (or any); the answers' arrays joined.
/// `M_NOT_FOUND` for a protocol no appservice declares.
pub async fn lookup(
    services: &Services,
    kind: Lookup,
    protocol: Option<&str>,
    query: &str,
) -> Result<Vec<Value>> {
    let appservices = appservices_for(services, protocol);
    if let (Some(protocol), true) = (protocol, appservices.is_empty()) {
        return Err(Error::not_found(format!(
            "no appservice serves protocol {protocol}"
        )));
    }
    let mut path = format!("/_matrix/app/v1/thirdparty/{}", kind.as_str());
    if let Some(protocol) = protocol {
        path = format!("{path}/{}", encode(protocol));
    }
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    let answers =
        join_all(appservices.iter().map(|appservice| {
            sender::request(services, appservice, http::Method::GET, &path, None)
        }))
        .await;
    Ok(answers
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|answer| match answer {
            Value::Array(items) => Some(items),
            _ => None,
        })
        .flatten()
        .collect())
}
