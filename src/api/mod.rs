//! Endpoint handlers: parse the request, call services, build the response.

pub mod client;
pub mod federation;
