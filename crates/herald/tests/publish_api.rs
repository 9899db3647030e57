//! Publishing and the HTTP API: `POST /pub/{channel}` in its three payload
//! kinds, `POST /api/publish`, channel info, API keys and error bodies.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn pub_text_answers_201_with_channel_id_and_subscribers() {
    let s = Server::start().await;
    let ch = channel("pub-text");
    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let v = resp.json();
    assert_eq!(v["channel"], ch.as_str());
    assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert_eq!(v["subscribers"], 0, "{v}");
}

#[tokio::test]
async fn publish_to_channel_without_subscribers_is_retained() {
    let s = Server::start().await;
    let ch = channel("nobody");
    let id = s.publish_text(&ch, "kept").await;
    let v = s.poll(&format!("/sub/{ch}?since=earliest&timeout=0")).await;
    let msgs = v["messages"].as_array().expect("messages array");
    assert_eq!(msgs.len(), 1, "{v}");
    assert_text_envelope(&msgs[0], &ch, &id, "kept");
    assert_eq!(v["last_id"], id.as_str(), "{v}");
    assert_eq!(v["gap"], false, "{v}");
}

#[tokio::test]
async fn payload_kinds_travel_as_json_value_string_or_base64() {
    let s = Server::start().await;
    let ch = channel("kinds");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;

    // JSON content type: a JSON value.
    let id = s
        .publish_json(&ch, r#"{"a": [1, 2, {"b": null}], "s": "x"}"#)
        .await;
    let v = ws.next_json().await;
    assert_eq!(envelope_id(&v, &ch), id);
    assert_eq!(
        v["data"],
        json!({"a": [1, 2, {"b": null}], "s": "x"}),
        "{v}"
    );
    assert!(v.get("encoding").is_none(), "{v}");

    // A JSON scalar is a JSON value too.
    let id = s
        .publish(&ch, "application/json; charset=utf-8", b"42")
        .await;
    let v = ws.next_json().await;
    assert_eq!(envelope_id(&v, &ch), id);
    assert_eq!(v["data"], json!(42), "{v}");

    // Other UTF-8 text: a JSON string, even when it looks like JSON.
    let id = s.publish_text(&ch, "{\"not\": \"parsed\"} ünïcödé ✓").await;
    let v = ws.next_json().await;
    assert_text_envelope(&v, &ch, &id, "{\"not\": \"parsed\"} ünïcödé ✓");

    // No content type at all, UTF-8: text.
    let id = s
        .publish(&ch, "application/octet-stream", b"plain bytes")
        .await;
    let v = ws.next_json().await;
    assert_text_envelope(&v, &ch, &id, "plain bytes");

    // Invalid UTF-8: base64 with "encoding": "base64".
    let bytes: Vec<u8> = vec![0xff, 0xfe, 0x00, 0x80, b'a', 0xc3];
    let id = s.publish(&ch, "application/octet-stream", &bytes).await;
    let v = ws.next_json().await;
    assert_eq!(envelope_id(&v, &ch), id);
    assert_eq!(v["encoding"], "base64", "{v}");
    assert_eq!(
        unb64(v["data"].as_str().expect("base64 string")),
        bytes,
        "{v}"
    );
}

#[tokio::test]
async fn pub_invalid_json_is_400_invalid_json() {
    let s = Server::start().await;
    let ch = channel("badjson");
    for body in ["{\"a\":", "not json", "", "{\"a\":1} trailing"] {
        let resp = s
            .post(&format!("/pub/{ch}"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        resp.assert_error(400, "invalid_json");
    }
    let info = s.info(&ch).await;
    assert_eq!(
        info["messages"], 0,
        "refused publishes must not be stored: {info}"
    );
}

#[tokio::test]
async fn api_publish_single_channel() {
    let s = Server::start().await;
    let ch = channel("api1");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channel": ch, "data": {"k": [true, "v"]}}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["channel"], ch.as_str(), "{v}");
    assert_eq!(v["subscribers"], 1, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let env = ws.next_json().await;
    assert_eq!(envelope_id(&env, &ch), id);
    assert_eq!(env["data"], json!({"k": [true, "v"]}), "{env}");
}

#[tokio::test]
async fn api_publish_many_channels() {
    let s = Server::start().await;
    let a = channel("api-a");
    let b = channel("api-b");
    let mut ws_b = s.ws(&format!("/sub/{b}")).await;
    s.wait_subscribers(&b, 1, IO_TIMEOUT).await;
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channels": [a, b], "data": "both"}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let v = resp.json();
    let results = v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"));
    assert_eq!(results.len(), 2, "{v}");
    assert_eq!(results[0]["channel"], a.as_str(), "{v}");
    assert_eq!(results[1]["channel"], b.as_str(), "{v}");
    assert_eq!(results[0]["subscribers"], 0, "{v}");
    assert_eq!(results[1]["subscribers"], 1, "{v}");
    let id_a = results[0]["id"].as_str().expect("id a").to_string();
    let id_b = results[1]["id"].as_str().expect("id b").to_string();

    let env = ws_b.next_json().await;
    assert_text_envelope(&env, &b, &id_b, "both");
    let poll = s.poll(&format!("/sub/{a}?since=earliest&timeout=0")).await;
    assert_text_envelope(&poll["messages"][0], &a, &id_a, "both");
}

#[tokio::test]
async fn api_publish_malformed_bodies() {
    let s = Server::start().await;
    let ch = channel("api-bad");
    let invalid_request = [
        json!({"data": 1}),                  // no channel
        json!({"channel": ch}),              // no data
        json!({"channel": 5, "data": 1}),    // channel not a string
        json!({"channels": "x", "data": 1}), // channels not a list
        json!([1, 2, 3]),                    // not an object
    ];
    for body in invalid_request {
        let resp = s
            .post("/api/publish")
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        resp.assert_error(400, "invalid_request");
    }
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await;
    resp.assert_error(400, "invalid_json");

    // A bad channel name inside a well-formed body is refused too.
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channel": "bad name!", "data": 1}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let code = resp.json()["error"]["code"].clone();
    assert!(
        code == "invalid_channel" || code == "invalid_request",
        "bad channel in /api/publish: code {code}"
    );
}

#[tokio::test]
async fn channel_info_counts_messages_subscribers_and_last_id() {
    let s = Server::start().await;
    let ch = channel("info");
    let v = s.info(&ch).await;
    assert_eq!(v["channel"], ch.as_str(), "{v}");
    assert_eq!(v["subscribers"], 0, "{v}");
    assert_eq!(v["messages"], 0, "{v}");
    assert_eq!(v["last_id"], Value::Null, "{v}");

    s.publish_text(&ch, "one").await;
    let second = s.publish_text(&ch, "two").await;
    let _ws = s.ws(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    let v = s.info(&ch).await;
    assert_eq!(v["messages"], 2, "{v}");
    assert_eq!(v["last_id"], second.as_str(), "{v}");

    // history_size = 3 in the short: namespace: the count stays bounded.
    let short = channel("short:info");
    let ids = s.publish_many(&short, "m", 5).await;
    let v = s.info(&short).await;
    assert_eq!(v["messages"], 3, "{v}");
    assert_eq!(v["last_id"], ids[4].as_str(), "{v}");
}

#[tokio::test]
async fn api_key_guards_pub_and_api_endpoints() {
    let s = Server::builder().api_key("s3cret-key").start().await;
    let ch = channel("auth");
    let pub_path = format!("/pub/{ch}");
    let calls: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", pub_path.clone(), b"x".to_vec()),
        ("GET", pub_path.clone(), vec![]),
        ("DELETE", pub_path.clone(), vec![]),
        (
            "POST",
            "/api/publish".to_string(),
            json!({"channel": ch, "data": 1}).to_string().into_bytes(),
        ),
    ];
    for (method, path, body) in &calls {
        let resp = s.req(method, path).no_auth().body(body).send().await;
        resp.assert_error(401, "unauthorized");
        let resp = s
            .req(method, path)
            .bearer("wrong-key")
            .body(body)
            .send()
            .await;
        resp.assert_error(401, "unauthorized");
        let resp = s
            .req(method, path)
            .no_auth()
            .header("Authorization", "s3cret-key")
            .body(body)
            .send()
            .await;
        resp.assert_error(401, "unauthorized");
    }
    assert_eq!(
        s.info(&ch).await["messages"],
        0,
        "nothing was published without the key"
    );

    // With the key every call works.
    let resp = s
        .post(&pub_path)
        .header("Content-Type", "text/plain")
        .body("ok")
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channel": ch, "data": 2}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(s.info(&ch).await["messages"], 2);
    let resp = s.delete(&pub_path).send().await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Subscribing needs no key.
    let resp = s.get(&format!("/sub/{ch}?timeout=0")).send().await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn api_key_from_env_herald_api_key() {
    let s = Server::builder()
        .env("HERALD_API_KEY", "env-key")
        .start()
        .await;
    let ch = channel("envkey");
    let resp = s.post(&format!("/pub/{ch}")).body("x").send().await;
    resp.assert_error(401, "unauthorized");
    let resp = s
        .post(&format!("/pub/{ch}"))
        .bearer("env-key")
        .body("x")
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
}

#[tokio::test]
async fn api_key_from_config_file() {
    let s = Server::builder()
        .set("api_key", "\"cfg-key\"")
        .start()
        .await;
    let ch = channel("cfgkey");
    let resp = s.post(&format!("/pub/{ch}")).body("x").send().await;
    resp.assert_error(401, "unauthorized");
    let resp = s
        .post(&format!("/pub/{ch}"))
        .bearer("cfg-key")
        .body("x")
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
}

#[tokio::test]
async fn listen_address_from_env_and_config() {
    let s = Server::builder()
        .no_listen_flag()
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .start()
        .await;
    assert!(s.addr.ip().is_loopback());
    let resp = s
        .get(&format!("/pub/{}", channel("listen-env")))
        .send()
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let s = Server::builder()
        .no_listen_flag()
        .set("listen", "\"127.0.0.1:0\"")
        .start()
        .await;
    let resp = s
        .get(&format!("/pub/{}", channel("listen-cfg")))
        .send()
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn error_bodies_for_bad_method_unknown_path_and_bad_channel() {
    let s = Server::start().await;
    let resp = s.req("PUT", "/pub/x").body("x").send().await;
    resp.assert_error(405, "method_not_allowed");
    let resp = s.req("PATCH", "/pub/x").body("x").send().await;
    resp.assert_error(405, "method_not_allowed");
    let resp = s.get("/api/publish").send().await;
    resp.assert_error(405, "method_not_allowed");
    let resp = s.get("/no/such/path").send().await;
    resp.assert_error(404, "not_found");
    let resp = s.get("/pub").send().await;
    resp.assert_error(404, "not_found");

    let too_long = "a".repeat(129);
    for bad in [
        "bad!name",
        "sp%20ace",
        "caf%C3%A9",
        "a%2Fb",
        "semi;colon",
        too_long.as_str(),
    ] {
        let resp = s.post(&format!("/pub/{bad}")).body("x").send().await;
        resp.assert_error(400, "invalid_channel");
        let resp = s.get(&format!("/pub/{bad}")).send().await;
        resp.assert_error(400, "invalid_channel");
        let resp = s.get(&format!("/sub/{bad}?timeout=0")).send().await;
        resp.assert_error(400, "invalid_channel");
        let resp = s
            .get(&format!("/sub/{bad}"))
            .header("Accept", "text/event-stream")
            .send()
            .await;
        resp.assert_error(400, "invalid_channel");
        let err = s
            .try_ws(&format!("/sub/{bad}"), &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("WS upgrade on channel {bad:?} must be refused"));
        assert!(err.starts_with("HTTP 400"), "WS on {bad:?}: {err}");
    }
}

#[tokio::test]
async fn channel_names_with_every_allowed_character_and_max_length() {
    let s = Server::start().await;
    let base = channel("ok");
    let names = [
        format!("{base}_A-z.0:9@x=y"),
        format!("{base}{}", "x".repeat(128 - base.len())),
    ];
    for ch in &names {
        assert!(ch.len() <= 128);
        let id = s.publish_text(ch, "fine").await;
        let v = s.poll(&format!("/sub/{ch}?since=earliest&timeout=0")).await;
        assert_text_envelope(&v["messages"][0], ch, &id, "fine");
    }
}
