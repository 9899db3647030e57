//! `GET /api/openapi.json`: the OpenAPI 3.1 description of every endpoint,
//! docs/openapi.json compiled into the binary (so the served copy is the
//! documented one; `scripts/openapi.sh` checks both are equal).
//!
//! Public, like `/health`: it tells nothing the docs do not, and tools
//! (schemathesis, Swagger UI, code generators) fetch it without
//! credentials. It is served where the backend API is (the API listener
//! when `api_listen` is set).

use axum::http::header;
use axum::response::IntoResponse;

const SPEC: &str = include_str!("../../../../docs/openapi.json");

pub(crate) async fn spec() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SPEC,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_spec_is_json_and_names_every_refusal_code() {
        let spec: serde_json::Value =
            serde_json::from_str(super::SPEC).expect("docs/openapi.json is JSON");
        let codes = &spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
            ["code"]["enum"];
        let codes: Vec<&str> = codes
            .as_array()
            .expect("the Error schema lists its codes")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        let table: Vec<&str> = herald_core::refusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes, table,
            "docs/openapi.json's error codes differ from refusal.rs: update the Error schema's enum"
        );
    }

    /// Every path `routes` serves (read from its source, `.route("…"`) is
    /// described, and nothing else is: a new endpoint fails here until
    /// docs/openapi.json has it.
    #[test]
    fn the_spec_describes_every_route_and_only_those() {
        let spec: serde_json::Value = serde_json::from_str(super::SPEC).expect("JSON");
        let described: std::collections::BTreeSet<&str> = spec["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        let routes: std::collections::BTreeSet<&str> = include_str!("mod.rs")
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .collect();
        assert!(
            routes.contains("/pub/{channel}") && routes.len() > 20,
            "{routes:?}"
        );
        assert_eq!(described, routes);
    }
}
