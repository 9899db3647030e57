//! The Pusher dialect's edges against the real binary (the happy paths
//! with the real pusher-js and `pusher` libraries are in
//! clients/js/test/e2e/pusher.test.js): refusals on `/app/{key}` (an
//! unknown key, no protocol version, an app at its quota), bad channel
//! auth, malformed frames and refused client events (each a
//! `pusher:error` in the protocol's ranges, the connection kept), and the
//! HTTP API's request signing (a bad signature, a stale timestamp, a
//! wrong body hash, a missing parameter, an unknown app).

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use hmac::{Hmac, Mac};
use md5::Digest as _;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(5);
const SECRET: &str = "secret-of-app1";

fn sign(secret: &str, text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(text.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn server() -> Server {
    Server::builder()
        .extra_config(
            "\n[[pusher.apps]]\nid = \"app1\"\nkey = \"key1\"\nsecret = \"secret-of-app1\"\n\
             \n[[pusher.apps]]\nid = \"quiet\"\nkey = \"key2\"\nsecret = \"secret-of-quiet\"\nmax_connections = 1\n",
        )
        .start()
        .await
}

/// A frame's `data`, parsed when it is a JSON string.
fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.stream
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("sent");
}

/// Opens `/app/key1` and returns the socket with its socket id.
async fn connect(server: &Server, key: &str) -> (Ws, String) {
    let mut ws = server
        .ws(&format!("/app/{key}?protocol=7&client=js&version=8"))
        .await;
    let hello = ws.next_json().await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    let id = data(&hello)["socket_id"]
        .as_str()
        .expect("socket_id")
        .to_string();
    (ws, id)
}

/// Sends a ping and expects the pong: the connection is still served.
async fn still_served(ws: &mut Ws) {
    send(ws, json!({"event": "pusher:ping", "data": {}})).await;
    let pong = ws.next_json().await;
    assert_eq!(pong["event"], "pusher:pong", "{pong}");
}

async fn expect_error(ws: &mut Ws, code: u16) -> Value {
    let frame = ws.next_json().await;
    assert_eq!(frame["event"], "pusher:error", "{frame}");
    assert_eq!(frame["data"]["code"], code, "{frame}");
    frame
}

#[tokio::test]
async fn refusals_at_the_door() {
    let server = server().await;
    let mut ws = server.ws("/app/nope?protocol=7").await;
    expect_error(&mut ws, 4001).await;
    assert_eq!(ws.expect_close(LIMIT).await.0, 4001);
    let mut ws = server.ws("/app/key1").await;
    expect_error(&mut ws, 4008).await;
    assert_eq!(ws.expect_close(LIMIT).await.0, 4008);
    let mut ws = server.ws("/app/key1?protocol=99").await;
    expect_error(&mut ws, 4007).await;
    // An app at its max_connections: 4004, until its connection leaves.
    let (first, _) = connect(&server, "key2").await;
    let mut second = server.ws("/app/key2?protocol=7").await;
    expect_error(&mut second, 4004).await;
    assert_eq!(second.expect_close(LIMIT).await.0, 4004);
    first.close().await;
    eventually(LIMIT, "a place for a new connection", || async {
        let mut ws = server.ws("/app/key2?protocol=7").await;
        let first = ws.next_json().await;
        if first["event"] == "pusher:connection_established" {
            Ok(())
        } else {
            Err(first.to_string())
        }
    })
    .await;
}

#[tokio::test]
async fn bad_auth_and_malformed_frames_keep_the_connection() {
    let server = server().await;
    let (mut ws, socket) = connect(&server, "key1").await;
    // No auth, a forged one, one for another socket, one for another channel.
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a"}}),
    )
    .await;
    expect_error(&mut ws, 4009).await;
    let forged = format!("key1:{}", "0".repeat(64));
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":forged}}),
    )
    .await;
    expect_error(&mut ws, 4009).await;
    let other = format!("key1:{}", sign(SECRET, "1.1:private-a"));
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":other}}),
    )
    .await;
    expect_error(&mut ws, 4009).await;
    let elsewhere = format!("key1:{}", sign(SECRET, &format!("{socket}:private-b")));
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":elsewhere}}),
    )
    .await;
    expect_error(&mut ws, 4009).await;
    // Presence needs channel_data, signed with it.
    let member = json!({"user_id": "u1"}).to_string();
    let signed = format!(
        "key1:{}",
        sign(SECRET, &format!("{socket}:presence-r:{member}"))
    );
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"presence-r","auth":signed}}),
    )
    .await;
    expect_error(&mut ws, 4009).await;
    send(&mut ws, json!({"event":"pusher:subscribe","data":{"channel":"presence-r","auth":signed,"channel_data":"{\"user_id\":\"u2\"}"}})).await;
    expect_error(&mut ws, 4009).await;
    // Malformed frames: 4300, and nothing else changes.
    for bad in [
        "not json",
        "[1]",
        "{\"event\":\"pusher:subscribe\"}",
        "{\"event\":\"whatever\"}",
    ] {
        ws.stream
            .send(Message::Text(bad.into()))
            .await
            .expect("sent");
        expect_error(&mut ws, 4300).await;
    }
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"a,b"}}),
    )
    .await;
    expect_error(&mut ws, 4300).await;
    // Client events: not on public channels, not where not subscribed,
    // not for an app that does not allow them.
    send(
        &mut ws,
        json!({"event":"client-x","channel":"news","data":{}}),
    )
    .await;
    expect_error(&mut ws, 4009).await;
    still_served(&mut ws).await;
    // The right signature works after all that.
    let good = format!("key1:{}", sign(SECRET, &format!("{socket}:private-a")));
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":good}}),
    )
    .await;
    let ok = ws.next_json().await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(ok["channel"], "private-a");
    send(
        &mut ws,
        json!({"event":"client-x","channel":"private-a","data":{}}),
    )
    .await;
    expect_error(&mut ws, 4009).await;
    // A binary frame is not the protocol: the close, not reconnecting.
    ws.stream
        .send(Message::Binary(vec![1, 2].into()))
        .await
        .expect("sent");
    expect_error(&mut ws, 4300).await;
    assert_eq!(ws.expect_close(LIMIT).await.0, 4300);
}

/// A signed request as Pusher's libraries make it.
fn signed_path(
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    secret: &str,
    at: u64,
) -> String {
    let mut query: Vec<(String, String)> = vec![
        ("auth_key".into(), "key1".into()),
        ("auth_timestamp".into(), at.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        let md5: String = md5::Md5::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        query.push(("body_md5".into(), md5));
    }
    query.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    query.sort();
    let joined: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let joined = joined.join("&");
    let signature = sign(secret, &format!("{method}\n{path}\n{joined}"));
    format!("{path}?{joined}&auth_signature={signature}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test]
async fn the_http_api_checks_request_signatures() {
    let server = server().await;
    let (mut ws, socket) = connect(&server, "key1").await;
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"news"}}),
    )
    .await;
    assert_eq!(
        ws.next_json().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let body = json!({"name":"e","data":"{\"n\":1}","channels":["news"]}).to_string();
    let post = |path: String, body: String| {
        server
            .post(&path)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let status = |path: String, body: String| async move { post(path, body).await.status };
    let events = "/apps/app1/events";
    // A wrong secret, a stale timestamp, a body that is not the one hashed.
    assert_eq!(
        status(
            signed_path("POST", events, &[], body.as_bytes(), "wrong-secret", now()),
            body.clone()
        )
        .await,
        401
    );
    assert_eq!(
        status(
            signed_path("POST", events, &[], body.as_bytes(), SECRET, now() - 601),
            body.clone()
        )
        .await,
        401
    );
    assert_eq!(
        status(
            signed_path("POST", events, &[], body.as_bytes(), SECRET, now()),
            body.replace("1", "2")
        )
        .await,
        401
    );
    assert_eq!(
        status(
            signed_path(
                "POST",
                "/apps/other/events",
                &[],
                body.as_bytes(),
                SECRET,
                now()
            ),
            body.clone()
        )
        .await,
        404
    );
    assert_eq!(status(events.to_string(), body.clone()).await, 400);
    // No event reached the subscriber; a good request does.
    let resp = post(
        signed_path("POST", events, &[], body.as_bytes(), SECRET, now()),
        body.clone(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let got = ws.next_json().await;
    assert_eq!(
        (got["event"].as_str(), data(&got)["n"].as_i64()),
        (Some("e"), Some(1)),
        "{got}"
    );
    assert!(got["herald_id"].is_string());
    // socket_id excludes; over 100 channels and oversized data are refused.
    let excluded =
        json!({"name":"e","data":"x","channels":["news"],"socket_id":socket}).to_string();
    assert_eq!(
        status(
            signed_path("POST", events, &[], excluded.as_bytes(), SECRET, now()),
            excluded.clone()
        )
        .await,
        200
    );
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let many = json!({"name":"e","data":"x","channels":many}).to_string();
    assert_eq!(
        status(
            signed_path("POST", events, &[], many.as_bytes(), SECRET, now()),
            many.clone()
        )
        .await,
        400
    );
    let big = json!({"name":"e","data":"x".repeat(70_000),"channel":"news"}).to_string();
    assert_eq!(
        status(
            signed_path("POST", events, &[], big.as_bytes(), SECRET, now()),
            big.clone()
        )
        .await,
        413
    );
    ws.expect_silence(Duration::from_millis(300)).await;
    // GETs are signed too, with their query.
    let path = signed_path(
        "GET",
        "/apps/app1/channels",
        &[("info", "subscription_count")],
        b"",
        SECRET,
        now(),
    );
    let resp = server.get(&path).send().await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let list: Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(list["channels"]["news"]["subscription_count"], 1, "{list}");
    let forged = path.replace("subscription_count", "user_count");
    assert_eq!(server.get(&forged).send().await.status, 401);
}
