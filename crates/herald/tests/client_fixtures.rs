//! The session-protocol fixtures the JavaScript client's unit tests answer
//! it with (clients/js/test/fixtures/session.json), replayed against the real
//! binary over WebSocket and over SSE + POST: every frame the server sends
//! must be the one the fixture says, so the client's unit tests cannot drift
//! from the server. The fixture file documents its placeholders.

mod common;
mod support_security;

use common::*;
use serde_json::{json, Map, Value};
use support_security::*;

const FIXTURE: &str = include_str!("../../../clients/js/test/fixtures/session.json");

/// Whether `actual` is what `expected` (with placeholders) says: `Err` names
/// the first difference by its path.
fn matches(expected: &Value, actual: &Value, at: &str) -> Result<(), String> {
    let differ = || Err(format!("at {at}: expected {expected}, got {actual}"));
    match (expected, actual) {
        (Value::String(p), _) if p == "$any" => Ok(()),
        (Value::String(p), Value::String(_)) if p == "$string" => Ok(()),
        (Value::String(p), Value::Number(_)) if p == "$number" => Ok(()),
        (Value::String(p), Value::String(id)) if p == "$id" => {
            let ok = id.split_once('-').is_some_and(|(ms, seq)| {
                [ms, seq]
                    .iter()
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
            if ok {
                Ok(())
            } else {
                differ()
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            let mut ek: Vec<&String> = e.keys().collect();
            let mut ak: Vec<&String> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                return Err(format!(
                    "at {at}: keys {ek:?} expected, got {ak:?} in {actual}"
                ));
            }
            for (k, v) in e {
                matches(v, &a[k], &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                matches(ev, av, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => differ(),
    }
}

/// `{run}` replaced by this replay's name, `$token:NAME` by a fresh token.
fn instantiate(v: &Value, run: &str, tokens: &Value) -> Value {
    match v {
        Value::String(s) => match s.strip_prefix("$token:") {
            Some(name) => {
                let spec = &tokens[name];
                let ttl = spec["ttl"].as_i64().unwrap_or(600);
                let mut c = claims(spec["sub"].as_str(), &[], ttl);
                if let Some(info) = spec.get("info") {
                    c["info"] = info.clone();
                }
                json!(hs256(&c))
            }
            None => json!(s.replace("{run}", run)),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| instantiate(x, run, tokens)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), instantiate(x, run, tokens)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// The fixture's hook backend (its `hook` line says the same).
async fn hook() -> HookBackend {
    HookBackend::start(|body| match body["method"].as_str() {
        Some("fail") => {
            HookAnswer::Json(json!({"error": {"code": "nope", "message": "no such method"}}))
        }
        _ => HookAnswer::Json(json!({"result": {
            "method": body["method"], "params": body["params"], "user": body["user"]
        }})),
    })
    .await
}

async fn replay(s: &Server, via: Via, fixture: &Value) {
    for conv in fixture["conversations"].as_array().expect("conversations") {
        let name = conv["name"].as_str().unwrap_or("?");
        let run = channel("fx").replace(':', "-");
        let mut sess = Session::open(s, via, "", &[]).await;
        let mut next_id = 1000;
        for (i, step) in conv["steps"].as_array().expect("steps").iter().enumerate() {
            let what = format!("{name} ({via:?}), step {i}");
            let mut send = instantiate(&step["send"], &run, &fixture["tokens"]);
            let expect = instantiate(&step["expect"], &run, &fixture["tokens"]);
            if step["until_match"] == true {
                // Resent with a new id until it matches (bounded).
                let deadline = std::time::Instant::now() + WAIT;
                loop {
                    next_id += 1;
                    send["id"] = json!(next_id);
                    let mut expect = expect.clone();
                    expect["id"] = json!(next_id);
                    sess.send_raw(&send.to_string()).await;
                    let got = sess.reply(next_id).await;
                    match matches(&expect, &got, "$") {
                        Ok(()) => break,
                        Err(diff) if std::time::Instant::now() >= deadline => {
                            panic!("{what}: not the fixture's frame within {WAIT:?} ({diff})")
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                }
                continue;
            }
            let id = send["id"].as_u64().expect("a step's frame has an id");
            sess.send_raw(&send.to_string()).await;
            let got = sess.reply(id).await;
            if let Err(diff) = matches(&expect, &got, "$") {
                panic!("{what}: the server's frame is not the fixture's ({diff}); sent {send}");
            }
        }
    }
}

#[tokio::test]
async fn the_js_clients_fixtures_are_what_the_server_sends() {
    let fixture: Value = serde_json::from_str(FIXTURE).expect("session.json is JSON");
    let backend = hook().await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}{}",
            fixture["config"].as_str().expect("config"),
            auth("5s"),
            hooks(&backend.url, &["rpc"], "deny", "2s")
        ))
        .start()
        .await;
    replay(&s, Via::Ws, &fixture).await;
    replay(&s, Via::Sse, &fixture).await;
}

#[test]
fn placeholders_match_what_they_say() {
    assert!(matches(&json!("$id"), &json!("17-3"), "$").is_ok());
    assert!(matches(&json!("$id"), &json!("17"), "$").is_err());
    assert!(matches(&json!({"a": "$number"}), &json!({"a": 1, "b": 2}), "$").is_err());
    assert!(matches(&json!([1, "$string"]), &json!([1, "x"]), "$").is_ok());
    assert!(matches(&json!(null), &json!(0), "$").is_err());
}
