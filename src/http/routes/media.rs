//! The content repository's routes (client and federation media endpoints); most of them are
//! raw routes that read the body and build the response themselves.

use http::Method;

use crate::api::{client::media, federation::media as fed_media};
use crate::http::{raw_route, typed, Auth, Route};
use Auth::{None as Open, Required as Token, Server};

/// Uploads, authenticated downloads and thumbnails, the media config and URL previews.
pub(super) fn client() -> Vec<Route> {
    vec![
        raw_route(
            Method::POST,
            "/_matrix/media/v3/upload",
            Token,
            media::create_content,
        ),
        typed(
            Method::POST,
            "/_matrix/media/v1/create",
            Token,
            media::create_mxc_uri,
        ),
        raw_route(
            Method::PUT,
            "/_matrix/media/v3/upload/{serverName}/{mediaId}",
            Token,
            media::create_content_async,
        ),
        raw_route(
            Method::GET,
            "/_matrix/client/v1/media/download/{serverName}/{mediaId}",
            Token,
            media::get_content,
        ),
        raw_route(
            Method::GET,
            "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}",
            Token,
            media::get_content_as_filename,
        ),
        raw_route(
            Method::GET,
            "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}",
            Token,
            media::get_content_thumbnail,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v1/media/config",
            Token,
            media::get_media_config,
        ),
        typed(
            Method::GET,
            "/_matrix/media/v3/config",
            Token,
            media::get_media_config_v3,
        ),
        typed(
            Method::GET,
            "/_matrix/client/v1/media/preview_url",
            Token,
            media::get_media_preview,
        ),
        typed(
            Method::GET,
            "/_matrix/media/v3/preview_url",
            Token,
            media::get_media_preview_v3,
        ),
    ]
}

/// The deprecated unauthenticated downloads, also under `r0` (clients and federation
/// fallbacks from before spec v1.1 still use it); frozen unless the config opens them.
pub(super) fn unauthenticated() -> Vec<Route> {
    vec![
        raw_route(
            Method::GET,
            "/_matrix/media/v3/download/{serverName}/{mediaId}",
            Open,
            media::get_content_unauthenticated,
        ),
        raw_route(
            Method::GET,
            "/_matrix/media/r0/download/{serverName}/{mediaId}",
            Open,
            media::get_content_unauthenticated,
        ),
        raw_route(
            Method::GET,
            "/_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}",
            Open,
            media::get_content_as_filename_unauthenticated,
        ),
        raw_route(
            Method::GET,
            "/_matrix/media/r0/download/{serverName}/{mediaId}/{fileName}",
            Open,
            media::get_content_as_filename_unauthenticated,
        ),
        raw_route(
            Method::GET,
            "/_matrix/media/v3/thumbnail/{serverName}/{mediaId}",
            Open,
            media::get_content_thumbnail_unauthenticated,
        ),
        raw_route(
            Method::GET,
            "/_matrix/media/r0/thumbnail/{serverName}/{mediaId}",
            Open,
            media::get_content_thumbnail_unauthenticated,
        ),
    ]
}

/// Media other servers download from this one.
pub(super) fn federation() -> Vec<Route> {
    vec![
        raw_route(
            Method::GET,
            "/_matrix/federation/v1/media/download/{mediaId}",
            Server,
            fed_media::get_content,
        ),
        raw_route(
            Method::GET,
            "/_matrix/federation/v1/media/thumbnail/{mediaId}",
            Server,
            fed_media::get_content_thumbnail,
        ),
    ]
}
