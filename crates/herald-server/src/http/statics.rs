//! The files Herald serves itself: the demo page and the JavaScript client,
//! compiled into the binary so one file is all an operator deploys.

use axum::http::header;
use axum::response::IntoResponse;

const DEMO: &str = include_str!("../../../../clients/js/demo/index.html");
const CLIENT: &str = include_str!("../../../../clients/js/herald.js");
/// The same client minified (clients/js/scripts/build.mjs; its test checks
/// the committed file is the build of herald.js).
const CLIENT_MIN: &str = include_str!("../../../../clients/js/herald.min.js");
const TYPES: &str = include_str!("../../../../clients/js/herald.d.ts");
const PUSHER_RESUME: &str = include_str!("../../../../clients/js/pusher-resume.js");

pub(crate) async fn demo() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DEMO)
}

pub(crate) async fn client() -> impl IntoResponse {
    script(CLIENT)
}

/// `/herald.min.js`: the client minified, the same module.
pub(crate) async fn client_min() -> impl IntoResponse {
    script(CLIENT_MIN)
}

/// `/pusher-resume.js`: the opt-in resume helper for unmodified pusher-js
/// (docs/pusher.md).
pub(crate) async fn pusher_resume() -> impl IntoResponse {
    script(PUSHER_RESUME)
}

fn script(text: &'static str) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
}

pub(crate) async fn types() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/typescript; charset=utf-8",
        )],
        TYPES,
    )
}
