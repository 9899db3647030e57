//! pusher-js's HTTP fallbacks (`xhr_streaming`, `xhr_polling`) at their
//! edges, against the real binary, byte by byte (the happy paths with the
//! real pusher-js are in clients/js/test/e2e/pusher-fallback.test.js):
//! refusals in the protocol (an unknown key, no protocol version, an app
//! at its quota), bad input on `xhr_send` (an unknown session, a body that
//! is not a JSON array of strings, an event over `max_command_size`, a bad
//! session path), and the session's life: frames as `a[...]` lines,
//! heartbeats, a stream taken over by a newer one, a silent client closed
//! with 4201, a lost session that pusher-js sees open again, and a
//! stopping node's 4200.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(5);

async fn server() -> Server {
    Server::builder()
        .set("heartbeat", "\"1s\"")
        .extra_config(
            "\n[limits]\nmax_command_size = 1024\n\
             \n[[pusher.apps]]\nid = \"app1\"\nkey = \"key1\"\nsecret = \"secret-of-app1\"\n\
             \n[[pusher.apps]]\nid = \"quiet\"\nkey = \"key2\"\nsecret = \"secret-of-quiet\"\nmax_connections = 1\n",
        )
        .start()
        .await
}

/// The base path of the HTTP socket session `server/session` of `key`.
fn base(key: &str, session: &str) -> String {
    format!("/pusher/app/{key}/7/{session}")
}

const QUERY: &str = "?protocol=7&client=js&version=8.6.0";

/// The lines of a body, each parsed: `("o", Null)`, `("a", [frames…])`
/// with every frame parsed from its string, `("h", Null)`, `("c", [code, reason])`.
fn lines(body: &[u8]) -> Vec<(String, Value)> {
    String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (kind, rest) = line.split_at(1);
            let value = match kind {
                "a" => {
                    let list: Vec<String> = serde_json::from_str(rest).expect("a[strings]");
                    Value::Array(
                        list.iter()
                            .map(|f| serde_json::from_str(f).expect("a Pusher frame"))
                            .collect(),
                    )
                }
                "c" => serde_json::from_str(rest).expect("c[code,reason]"),
                _ => Value::Null,
            };
            (kind.to_string(), value)
        })
        .collect()
}

/// The events of the `a` lines, in order.
fn events(lines: &[(String, Value)]) -> Vec<Value> {
    lines
        .iter()
        .filter(|(k, _)| k == "a")
        .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
        .collect()
}

async fn poll(server: &Server, key: &str, session: &str) -> Resp {
    server
        .post(&format!("{}/xhr{QUERY}", base(key, session)))
        .send()
        .await
}

async fn send(server: &Server, key: &str, session: &str, body: &str) -> Resp {
    server
        .post(&format!("{}/xhr_send", base(key, session)))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
}

fn subscribe(channel: &str) -> String {
    json!([json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()])
        .to_string()
}

/// Reads a streaming receive until `done` holds for the lines so far.
async fn read_until(
    stream: &mut HttpStream,
    got: &mut Vec<u8>,
    what: &str,
    done: impl Fn(&[(String, Value)]) -> bool,
) {
    within(LIMIT, what, async {
        while !done(&lines(got)) {
            let piece = stream.next_data().await;
            let Some(piece) = piece else {
                panic!(
                    "the stream ended before {what}: {}",
                    String::from_utf8_lossy(got)
                )
            };
            got.extend_from_slice(&piece);
        }
    })
    .await;
}

#[tokio::test]
async fn refusals_and_bad_input() {
    let server = server().await;
    // An unknown key: the session opens and closes with 4001, as a
    // WebSocket would be told.
    let r = poll(&server, "nope", "aaaaaaaa").await;
    assert_eq!(r.status, 200);
    let got = lines(&r.body);
    assert_eq!(got[0].0, "o");
    assert_eq!(events(&got)[0]["data"]["code"], 4001, "{got:?}");
    assert_eq!(got.last().map(|l| l.1[0].clone()), Some(json!(4001)));
    // No protocol version: 4008.
    let r = server
        .post(&format!("{}/xhr", base("key1", "noversion")))
        .send()
        .await;
    assert_eq!(events(&lines(&r.body))[0]["data"]["code"], 4008);
    // A session path pusher-js would not make: 400.
    let r = server
        .post(&format!("/pusher/app/key1/7/{}/xhr{QUERY}", "x".repeat(33)))
        .send()
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = server
        .post("/pusher/app/key1/7/a.b/xhr_send")
        .body("[]")
        .send()
        .await;
    assert_eq!(r.status, 400);
    // A send to a session that does not exist: 404.
    let r = send(&server, "key1", "unknown1", "[]").await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("session_not_found"));

    // A live session: bad sends are refused and the session goes on.
    let r = poll(&server, "key1", "sess0001").await;
    assert_eq!(lines(&r.body)[0].0, "o");
    let established = match events(&lines(&r.body)).first() {
        Some(e) => e.clone(),
        None => events(&lines(&poll(&server, "key1", "sess0001").await.body))[0].clone(),
    };
    assert_eq!(established["event"], "pusher:connection_established");
    for bad in ["nope", "{\"event\":\"pusher:ping\"}", "[1]", ""] {
        let r = send(&server, "key1", "sess0001", bad).await;
        assert_eq!(
            r.status,
            400,
            "{bad:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            String::from_utf8_lossy(&r.body).contains("JSON array of strings"),
            "{bad:?}"
        );
    }
    let big = json!([format!(
        "{{\"event\":\"client-x\",\"data\":\"{}\"}}",
        "x".repeat(2000)
    )]);
    let r = send(&server, "key1", "sess0001", &big.to_string()).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    // A frame the dialect refuses is a pusher:error in the session.
    let r = send(&server, "key1", "sess0001", "[\"{oops\"]").await;
    assert_eq!(r.status, 204);
    let r = send(&server, "key1", "sess0001", &subscribe("news")).await;
    assert_eq!(r.status, 204);
    let all = within(LIMIT, "the error and the subscription", async {
        let mut all = Vec::new();
        while all.len() < 2 {
            all.extend(events(&lines(
                &poll(&server, "key1", "sess0001").await.body,
            )));
        }
        all
    })
    .await;
    assert_eq!(all[0]["event"], "pusher:error");
    assert_eq!(all[0]["data"]["code"], 4300);
    assert_eq!(all[1]["event"], "pusher_internal:subscription_succeeded");

    // The app at its quota (max_connections = 1): the second session is 4004.
    let first = poll(&server, "key2", "quota001").await;
    assert_eq!(lines(&first.body)[0].0, "o");
    let r = poll(&server, "key2", "quota002").await;
    assert_eq!(events(&lines(&r.body))[0]["data"]["code"], 4004);
}

#[tokio::test]
async fn a_session_streams_takes_over_and_ends() {
    let server = server().await;
    let path = format!("{}/xhr_streaming{QUERY}", base("key1", "stream01"));
    let mut stream = server.post(&path).stream().await;
    assert_eq!(stream.status, 200);
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, "the open and the hello", |l| {
        events(l).len() == 1
    })
    .await;
    assert_eq!(lines(&got)[0].0, "o");
    assert_eq!(
        send(&server, "key1", "stream01", &subscribe("live"))
            .await
            .status,
        204
    );
    read_until(&mut stream, &mut got, "the subscription", |l| {
        events(l).len() == 2
    })
    .await;
    let id = server.publish_json("pusher:app1:live", "{\"n\":1}").await;
    read_until(&mut stream, &mut got, "the event", |l| events(l).len() == 3).await;
    let event = events(&lines(&got))[2].clone();
    assert_eq!(
        (event["event"].as_str(), event["herald_id"].as_str()),
        (Some("message"), Some(id.as_str()))
    );
    // A heartbeat line within the heartbeat (1 s); pusher-js answers `[]`.
    read_until(&mut stream, &mut got, "a heartbeat", |l| {
        l.iter().any(|(k, _)| k == "h")
    })
    .await;
    assert_eq!(send(&server, "key1", "stream01", "[]").await.status, 204);

    // A newer receive takes over (pusher-js reopens after 256 KiB): the
    // old response ends, the new one gets what follows, with no `o`.
    let mut newer = server.post(&path).stream().await;
    within(LIMIT, "the old stream ends", async {
        while stream.next_data().await.is_some() {}
    })
    .await;
    let id = server.publish_json("pusher:app1:live", "{\"n\":2}").await;
    let mut got = Vec::new();
    read_until(&mut newer, &mut got, "the event on the newer stream", |l| {
        !events(l).is_empty()
    })
    .await;
    assert!(lines(&got).iter().all(|(k, _)| k != "o"), "{got:?}");
    assert_eq!(events(&lines(&got))[0]["herald_id"], id.as_str());

    // A client that stops answering heartbeats is closed with 4201 (two
    // heartbeats of silence), its pusher:error first.
    read_until(&mut newer, &mut got, "the close", |l| {
        l.iter().any(|(k, _)| k == "c")
    })
    .await;
    let all = lines(&got);
    assert_eq!(
        all.last().map(|l| l.1.clone()),
        Some(json!([4201, "pong reply not received"]))
    );
    assert_eq!(
        events(&all).last().map(|e| e["data"]["code"].clone()),
        Some(json!(4201))
    );
    // The session is gone: a send is 404, and a receive opens a new
    // session, whose `o` tells pusher-js its old one was lost.
    assert_eq!(send(&server, "key1", "stream01", "[]").await.status, 404);
    let r = poll(&server, "key1", "stream01").await;
    assert_eq!(lines(&r.body)[0].0, "o");
}

#[tokio::test]
async fn an_idle_poll_answers_a_heartbeat() {
    let server = server().await;
    let first = poll(&server, "key1", "idle0001").await;
    assert_eq!(lines(&first.body)[0].0, "o");
    let mut seen = events(&lines(&first.body));
    if seen.is_empty() {
        seen = events(&lines(&poll(&server, "key1", "idle0001").await.body));
    }
    assert_eq!(seen[0]["event"], "pusher:connection_established");
    // Nothing queued: the poll waits one heartbeat, then answers `h`.
    let r = within(LIMIT, "an idle poll", poll(&server, "key1", "idle0001")).await;
    assert_eq!(lines(&r.body), vec![("h".to_string(), Value::Null)]);
    // The session counts among the open connections.
    let stats = server.get("/api/stats").send().await;
    let stats: Value = serde_json::from_slice(&stats.body).expect("stats");
    assert!(
        stats["connections_by_transport"]["pusher"].as_u64() >= Some(1),
        "{stats}"
    );
}

#[tokio::test]
async fn a_stopping_node_closes_each_session_with_4200() {
    let mut server = server().await;
    let path = format!("{}/xhr_streaming{QUERY}", base("key1", "stop0001"));
    let mut stream = server.post(&path).stream().await;
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, "the hello", |l| events(l).len() == 1).await;
    server.process.signal("TERM");
    // Told before the node goes: pusher-js reconnects at once (4200).
    read_until(&mut stream, &mut got, "the close", |l| {
        l.iter().any(|(k, _)| k == "c")
    })
    .await;
    let all = lines(&got);
    assert_eq!(
        all.last().map(|l| l.1[0].clone()),
        Some(json!(4200)),
        "{all:?}"
    );
    assert_eq!(
        events(&all).last().map(|e| e["data"]["code"].clone()),
        Some(json!(4200))
    );
    let status = server.process.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}
