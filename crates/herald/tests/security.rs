//! The security model (docs/security.md), driven against the real binary:
//! who may connect, subscribe, publish and call the backend endpoints, on
//! every transport a rule touches. Each refusal is checked where users see
//! it (HTTP status and error code before a WebSocket upgrade, the session
//! protocol's error reply, close codes) and, where it matters, that other
//! clients go on receiving.
//!
//! Sections: tokens, `/api/tokens`, tickets, token expiry and refresh,
//! personal channels, presence, hooks, origins, limits, settings refused at
//! start, API keys. Helpers (token forging, test keys made with `openssl`,
//! the hook backend, the session client) are in `support_security`.

mod common;
mod support_security;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use support_security::*;

/// A private namespace: subscribing needs a token granting the channel.
const PRIVATE_NS: &str = "\n[[namespace]]\nprefix = \"priv:\"\nprivate = true\npresence = true\n\
     \n[[namespace]]\nprefix = \"privchat:\"\nprivate = true\nclient_publish = true\n";
/// Personal channels with a bounded offline queue.
const USER_NS: &str =
    "\n[[namespace]]\nprefix = \"user:\"\nhistory_size = 10\nhistory_ttl = \"10m\"\n";
/// Presence with join/leave notices.
const ROOM_NS: &str = "\n[[namespace]]\nprefix = \"room:\"\npresence = true\njoin_leave = true\n";
/// Clients may publish through the session.
const CHAT_NS: &str = "\n[[namespace]]\nprefix = \"chat:\"\nclient_publish = true\n";

const WAIT: Duration = Duration::from_secs(5);

fn auth(leeway: &str) -> String {
    format!("\n[auth]\nhmac_secret = \"{SECRET}\"\nleeway = \"{leeway}\"\n")
}

fn hooks(url: &str, events: &[&str], on_error: &str, timeout: &str) -> String {
    format!(
        "\n[hooks]\nurl = \"{url}\"\nevents = {}\ntimeout = \"{timeout}\"\non_error = \"{on_error}\"\n",
        json!(events)
    )
}

/// A token with an `info` claim.
/// An HMAC token of another algorithm, signed with [`SECRET`].
fn hs_alg(claims: &Value, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn token_with_info(sub: &str, channels: &[&str], info: Value) -> String {
    let mut c = claims(Some(sub), channels, 3600);
    c["info"] = info;
    hs256(&c)
}

fn sse_req<'a>(s: &'a Server, path: &str) -> Req<'a> {
    s.get(path).header("Accept", "text/event-stream")
}

async fn ndjson_with(s: &Server, path: &str, headers: &[(&str, &str)]) -> Ndjson {
    let mut r = s.get(path).header("Accept", "application/x-ndjson");
    for (k, v) in headers {
        r = r.header(k, v);
    }
    let http = r.stream().await;
    assert_eq!(http.status, 200, "NDJSON {path}");
    Ndjson::new(http)
}

async fn sse_message(sse: &mut Sse, id: &str) -> SseEvent {
    let want = id.to_string();
    sse_until(sse, &format!("SSE message {id}"), move |e| {
        e.event == "message" && e.id.as_deref() == Some(want.as_str())
    })
    .await
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

async fn token_server(leeway: &str) -> Server {
    Server::builder()
        .extra_config(&format!("{PRIVATE_NS}{}", auth(leeway)))
        .start()
        .await
}

#[tokio::test]
async fn valid_hs256_token_is_accepted_on_every_client_transport() {
    let s = token_server("5s").await;
    let ch = channel("priv:valid");
    let t = token("u1", &["priv:*"]);
    let b = bearer(&t);
    let path = format!("/sub/{ch}");

    let mut ws = s.ws_with(&path, &[("Authorization", &b)]).await;
    let mut sse = s.sse(&path, &[("Cookie", &cookie(&t))]).await;
    let mut nd = ndjson_with(&s, &path, &[("Authorization", &b)]).await;
    let (mut sess, reply) = Session::connected(&s, Via::Ws, Some(&t)).await;
    assert_eq!(reply["user"], "u1", "connect reply {reply}");
    let exp = reply["expires_at"].as_u64().expect("expires_at");
    assert!(
        exp + 5 >= now() + 3600 && exp <= now() + 3600,
        "expires_at {exp}"
    );
    sess.ok("subscribe", json!({"channel": ch})).await;
    let mut sess_sse = Session::open(&s, Via::Sse, "", &[("Authorization", &b)]).await;
    sess_sse.ok("subscribe", json!({"channel": ch})).await;
    s.wait_subscribers(&ch, 5, WAIT).await;

    let id = s.publish_json(&ch, r#"{"n":1}"#).await;
    let data = json!({"n": 1});
    assert_eq!(ws_until_data(&mut ws, &data).await["id"], id.as_str());
    assert_eq!(sse_message(&mut sse, &id).await.data, r#"{"n":1}"#);
    nd_until(&mut nd, "NDJSON message", |v| v["id"] == id.as_str()).await;
    sess.push_until("session WS message", |v| is_message(v, &ch, &data))
        .await;
    sess_sse
        .push_until("session SSE message", |v| is_message(v, &ch, &data))
        .await;

    // Long-poll with the bearer header and with the cookie.
    for (name, value) in [("Authorization", b.clone()), ("Cookie", cookie(&t))] {
        let resp = answer(
            s.get(&format!("{path}?since=earliest&timeout=0"))
                .header(name, &value),
            "long-poll with a token",
        )
        .await;
        assert_eq!(resp.status, 200, "long-poll with {name}: {}", resp.text());
        assert_eq!(
            resp.json()["messages"][0]["id"],
            id.as_str(),
            "{}",
            resp.text()
        );
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_on_every_transport() {
    let s = token_server("5s").await;
    let ch = channel("priv:bad");
    let public = channel("open");
    let good = token("good", &["priv:*"]);
    let mut watcher = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&good))])
        .await;

    let grant = claims(Some("u1"), &["priv:*"], 3600);
    let mut not_yet = grant.clone();
    not_yet["nbf"] = json!(now() + 300);
    let mut no_exp = grant.clone();
    no_exp.as_object_mut().expect("object").remove("exp");
    let cases = [
        (
            "forged",
            hs256_with(&grant, b"another-secret-that-is-long-enough-0"),
            "invalid_token",
        ),
        (
            "expired",
            hs256(&claims(Some("u1"), &["priv:*"], -60)),
            "token_expired",
        ),
        ("not yet valid", hs256(&not_yet), "invalid_token"),
        ("alg none", alg_none(&grant), "invalid_token"),
        ("without exp", hs256(&no_exp), "invalid_token"),
        ("malformed", "not.a.token".to_string(), "invalid_token"),
        (
            "HS512",
            hs_alg(&grant, jsonwebtoken::Algorithm::HS512),
            "invalid_token",
        ),
        (
            "HS384",
            hs_alg(&grant, jsonwebtoken::Algorithm::HS384),
            "invalid_token",
        ),
    ];
    let mut messages = Vec::new();
    for (name, t, code) in &cases {
        let b = bearer(t);
        let what = |t: &str| format!("{name} token on {t}");
        let body = assert_ws_refused(
            s.try_ws(&format!("/sub/{ch}"), &[("Authorization", &b)])
                .await,
            401,
            code,
            &what("WS upgrade"),
        );
        messages.push((
            name.to_string(),
            body["error"]["message"].as_str().unwrap_or("").to_string(),
        ));
        // A wrong credential on a public channel is refused too, not taken as anonymous.
        assert_ws_refused(
            s.try_ws(&format!("/sub/{public}"), &[("Authorization", &b)])
                .await,
            401,
            code,
            &what("WS upgrade of a public channel"),
        );
        answer(
            sse_req(&s, &format!("/sub/{ch}")).header("Cookie", &cookie(t)),
            &what("SSE"),
        )
        .await
        .assert_error(401, code);
        answer(
            s.get(&format!("/sub/{ch}?timeout=0"))
                .header("Authorization", &b),
            &what("long-poll"),
        )
        .await
        .assert_error(401, code);
        answer(
            s.get(&format!("/sub/{ch}?transport=stream"))
                .header("Authorization", &b),
            &what("NDJSON"),
        )
        .await
        .assert_error(401, code);
        let mut sess = Session::open(&s, Via::Ws, "", &[]).await;
        assert_eq!(
            sess.refused_code("connect", json!({ "token": t })).await,
            *code,
            "{}",
            what("session connect")
        );
        let (status, body) = Session::refused(&s, Via::Sse, "", &[("Authorization", &b)]).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!(code)),
            "{}: {body}",
            what("session SSE")
        );
    }
    // "a message saying which"
    let of = |n: &str| {
        messages
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    };
    let (forged, expired, early) = (of("forged"), of("expired"), of("not yet valid"));
    assert!(
        forged != expired && expired != early && forged != early,
        "refusal messages must say which: forged {forged:?}, expired {expired:?}, nbf {early:?}"
    );

    // The subscriber that was there all along is untouched.
    s.publish_json(&ch, r#"{"after":"refusals"}"#).await;
    let first = watcher.next_json().await;
    assert_eq!(first["data"], json!({"after": "refusals"}), "{first}");
}

#[tokio::test]
async fn tokens_within_the_leeway_are_accepted_and_stay_connected() {
    let s = token_server("5s").await;
    let ch = channel("priv:leeway");
    // Expired 2 s ago, or valid from 2 s from now: both inside a 5 s leeway.
    let late = hs256(&claims(Some("late"), &["priv:*"], -2));
    let mut early_claims = claims(Some("early"), &["priv:*"], 3600);
    early_claims["nbf"] = json!(now() + 2);
    let early = hs256(&early_claims);
    let mut ws_late = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&late))])
        .await;
    let mut ws_early = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&early))])
        .await;
    let (mut sess_late, _) = Session::connected(&s, Via::Ws, Some(&late)).await;
    sess_late.ok("subscribe", json!({"channel": ch})).await;

    // An accepted connection is not closed at once: the leeway that let
    // the token in also applies to its end.
    let id = s.publish_text(&ch, "inside the leeway").await;
    match ws_late.next_event(WAIT).await {
        WsEvent::Json(v) => assert_eq!(v["id"], id.as_str(), "{v}"),
        other => panic!("a WebSocket accepted with a token inside the leeway got {other:?} instead of the next message"),
    }
    assert_eq!(ws_early.next_json().await["id"], id.as_str());
    let v = sess_late.push().await;
    assert_eq!(
        v["id"],
        id.as_str(),
        "session accepted inside the leeway got {v}"
    );
}

#[tokio::test]
async fn algorithm_confusion_hs256_signed_with_the_public_key_is_refused() {
    let k = keys();
    let s = Server::builder()
        .extra_config(&format!(
            "{PRIVATE_NS}\n[auth]\npublic_keys = [{}]\n",
            toml_path(&k.rsa_public_path)
        ))
        .start()
        .await;
    let ch = channel("priv:confusion");
    let grant = claims(Some("mallory"), &["*"], 3600);
    let pem = &k.rsa_public_pem;
    let trimmed = String::from_utf8_lossy(pem).trim().to_string();
    for (name, forged) in [
        ("PEM bytes", hs256_with(&grant, pem)),
        ("trimmed PEM", hs256_with(&grant, trimmed.as_bytes())),
    ] {
        let b = bearer(&forged);
        assert_ws_refused(
            s.try_ws(&format!("/sub/{ch}"), &[("Authorization", &b)])
                .await,
            401,
            "invalid_token",
            &format!("HS256 with the {name} as secret, WS"),
        );
        answer(
            sse_req(&s, &format!("/sub/{ch}")).header("Authorization", &b),
            "SSE",
        )
        .await
        .assert_error(401, "invalid_token");
        let mut sess = Session::open(&s, Via::Ws, "", &[]).await;
        assert_eq!(
            sess.refused_code("connect", json!({"token": forged})).await,
            "invalid_token"
        );
    }
    // The real RS256 token for the same claims passes.
    let real = rs256(&grant, &k.rsa_private, None);
    let mut ws = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&real))])
        .await;
    s.publish_text(&ch, "ok").await;
    assert_eq!(ws.next_json().await["data"], "ok");
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_public_keys() {
    let k = keys();
    let s = Server::builder()
        .extra_config(&format!(
            "{PRIVATE_NS}\n[auth]\npublic_keys = [{}, {}]\n",
            toml_path(&k.rsa_public_path),
            toml_path(&k.ec_public_path)
        ))
        .start()
        .await;
    let ch = channel("priv:pk");
    let grant = |sub: &str| claims(Some(sub), &["priv:*"], 3600);
    let rsa = rs256(&grant("rsa-user"), &k.rsa_private, None);
    let ec = es256(&grant("ec-user"), &k.ec_private, None);

    let mut ws = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&rsa))])
        .await;
    let mut sse = s
        .sse(&format!("/sub/{ch}"), &[("Cookie", &cookie(&ec))])
        .await;
    let (mut sess, reply) = Session::connected(&s, Via::Ws, Some(&ec)).await;
    assert_eq!(reply["user"], "ec-user");
    sess.ok("subscribe", json!({"channel": ch})).await;

    // A key configured nowhere, and HS256 with no hmac_secret configured.
    let stranger = rs256(&grant("x"), &k.rsa_stranger_private, None);
    let hs = hs256(&grant("x"));
    for (name, t) in [
        ("unknown RSA key", &stranger),
        ("HS256 without hmac_secret", &hs),
    ] {
        assert_ws_refused(
            s.try_ws(&format!("/sub/{ch}"), &[("Authorization", &bearer(t))])
                .await,
            401,
            "invalid_token",
            name,
        );
        let mut other = Session::open(&s, Via::Ws, "", &[]).await;
        assert_eq!(
            other.refused_code("connect", json!({"token": t})).await,
            "invalid_token",
            "{name}"
        );
    }

    let id = s.publish_text(&ch, "signed").await;
    assert_eq!(ws.next_json().await["id"], id.as_str());
    assert_eq!(sse_message(&mut sse, &id).await.data, "signed");
    sess.push_until("session message", |v| v["id"] == id.as_str())
        .await;
}

#[tokio::test]
async fn jwks_keys_are_chosen_by_kid() {
    let k = keys();
    let s = Server::builder()
        .extra_config(&format!(
            "{PRIVATE_NS}\n[auth]\njwks_file = {}\n",
            toml_path(&k.jwks_path)
        ))
        .start()
        .await;
    let ch = channel("priv:jwks");
    let grant = claims(Some("j"), &["priv:*"], 3600);

    let rsa = rs256(&grant, &k.jwks_rsa_k1_private, Some("rsa-k1"));
    let mut ws = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&rsa))])
        .await;
    let ec = es256(&grant, &k.jwks_ec_e1_private, Some("ec-e1"));
    let (mut sess, reply) = Session::connected(&s, Via::Ws, Some(&ec)).await;
    assert_eq!(reply["user"], "j");
    sess.ok("subscribe", json!({"channel": ch})).await;

    // Signed by k1 but naming k0 (another key in the set), or an unknown kid.
    for kid in ["rsa-k0", "no-such-kid"] {
        let t = rs256(&grant, &k.jwks_rsa_k1_private, Some(kid));
        assert_ws_refused(
            s.try_ws(&format!("/sub/{ch}"), &[("Authorization", &bearer(&t))])
                .await,
            401,
            "invalid_token",
            &format!("RS256 token naming kid {kid}"),
        );
    }
    let id = s.publish_text(&ch, "jwks").await;
    assert_eq!(ws.next_json().await["id"], id.as_str());
    sess.push_until("session message", |v| v["id"] == id.as_str())
        .await;
}

#[tokio::test]
async fn private_channel_needs_a_granting_token() {
    let s = token_server("5s").await;
    let ch = channel("priv:grant");
    let path = format!("/sub/{ch}");
    let wrong = bearer(&token("u1", &["priv:other-*", "news"]));
    let exact = token("u2", &[ch.as_str()]);
    let mut granted = s
        .ws_with(&path, &[("Authorization", &bearer(&exact))])
        .await;

    let cases = [
        (
            "a token granting other channels",
            vec![("Authorization", wrong.as_str())],
            403,
            "forbidden",
        ),
        ("no token", vec![], 401, "token_required"),
    ];
    let mut failures = Vec::new();
    for (name, headers, status, code) in &cases {
        match s.try_ws(&path, headers).await {
            Ok(_) => failures.push(format!("{name}, WS: upgrade accepted")),
            Err(e) => {
                let (got, body) = ws_refusal(Err(e), name);
                if got != *status || body["error"]["code"] != *code {
                    failures.push(format!(
                        "{name}, WS: expected {status} {code}, got {got} {body}"
                    ));
                }
            }
        }
        let requests = [
            ("SSE", sse_req(&s, &path)),
            ("long-poll", s.get(&format!("{path}?timeout=0"))),
            ("NDJSON", s.get(&format!("{path}?transport=stream"))),
            ("JSONP", s.get(&format!("{path}?callback=cb&timeout=0"))),
            (
                "forever-iframe",
                s.get(&format!("{path}?transport=iframe&callback=cb")),
            ),
        ];
        for (transport, mut r) in requests {
            for (k, v) in headers {
                r = r.header(k, v);
            }
            let resp = answer(r, &format!("{name}, {transport}")).await;
            let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
            if resp.status != *status || v["error"]["code"] != *code {
                failures.push(format!(
                    "{name}, {transport}: expected {status} {code}, got {} {}",
                    resp.status,
                    resp.text().chars().take(200).collect::<String>()
                ));
            }
        }
    }

    // Session: subscribe, history, presence and client publish are refused alike.
    let privchat = channel("privchat:room");
    for via in [Via::Ws, Via::Sse] {
        for (name, t, code) in [
            ("anonymous", None, "token_required"),
            (
                "other grant",
                Some(token("u1", &["priv:other-*"])),
                "forbidden",
            ),
        ] {
            let (mut sess, _) = Session::connected(&s, via, t.as_deref()).await;
            for (command, body) in [
                ("subscribe", json!({"channel": ch})),
                ("history", json!({"channel": ch})),
                ("presence", json!({"channel": ch})),
                ("publish", json!({"channel": privchat, "data": "sneaky"})),
            ] {
                let got = sess.refused_code(command, body).await;
                if got != code {
                    failures.push(format!(
                        "session {via:?}, {name}, {command}: expected {code}, got {got}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "private channel refusals:\n{}",
        failures.join("\n")
    );

    let (mut star, _) = Session::connected(&s, Via::Ws, Some(&token("u3", &["*"]))).await;
    star.ok("subscribe", json!({"channel": ch})).await;
    let (mut poster, _) =
        Session::connected(&s, Via::Ws, Some(&token("u4", &["privchat:*"]))).await;
    poster
        .ok("publish", json!({"channel": privchat, "data": "granted"}))
        .await;
    assert_eq!(
        s.info(&privchat).await["messages"],
        1,
        "only the granted publish is stored"
    );

    let id = s.publish_text(&ch, "for the granted").await;
    assert_eq!(granted.next_json().await["id"], id.as_str());
    star.push_until("message for the * grant", |v| v["id"] == id.as_str())
        .await;
}

#[tokio::test]
async fn private_channel_with_a_token_granting_nothing_is_403_not_token_required() {
    // "401 token_required without a token, 403 forbidden with one that does
    // not grant it": a valid token with no `sub` and no `channels` is a token.
    let s = token_server("5s").await;
    let ch = channel("priv:empty");
    let path = format!("/sub/{ch}");
    let empty = hs256(&claims(None, &[], 3600));
    let b = bearer(&empty);
    let mut failures = Vec::new();
    let (got, body) = ws_refusal(s.try_ws(&path, &[("Authorization", &b)]).await, "WS");
    if (got, &body["error"]["code"]) != (403, &json!("forbidden")) {
        failures.push(format!("WS upgrade: got {got} {body}"));
    }
    for (name, r) in [
        ("SSE", sse_req(&s, &path)),
        ("long-poll", s.get(&format!("{path}?timeout=0"))),
    ] {
        let resp = answer(r.header("Authorization", &b), name).await;
        if resp.status != 403 {
            failures.push(format!("{name}: got {} {}", resp.status, resp.text()));
        }
    }
    let (mut sess, _) = Session::connected(&s, Via::Ws, Some(&empty)).await;
    let code = sess.refused_code("subscribe", json!({"channel": ch})).await;
    if code != "forbidden" {
        failures.push(format!("session subscribe: got {code}"));
    }
    assert!(
        failures.is_empty(),
        "a valid token granting nothing, on a private channel:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_token_in_the_url_is_not_a_credential() {
    let s = token_server("5s").await;
    let ch = channel("priv:url");
    let t = token("u1", &["priv:*"]);
    for param in ["token", "access_token", "herald_token", "jwt"] {
        let path = format!("/sub/{ch}?{param}={t}");
        assert_ws_refused(
            s.try_ws(&path, &[]).await,
            401,
            "token_required",
            &format!("?{param}= on WS"),
        );
        answer(sse_req(&s, &path), &format!("?{param}= on SSE"))
            .await
            .assert_error(401, "token_required");
        // Nor do the session URLs.
        for via in [Via::Ws, Via::Sse] {
            let mut sess = Session::open(&s, via, &format!("?{param}={t}"), &[]).await;
            assert_eq!(
                sess.refused_code("subscribe", json!({"channel": ch})).await,
                "token_required",
                "?{param}= on the {via:?} session URL"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// POST /api/tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn api_tokens_needs_the_api_key_and_signs_working_tokens() {
    let s = Server::builder()
        .api_key("k-main")
        .extra_config(&format!(
            "{PRIVATE_NS}\n[auth]\nhmac_secret = \"{SECRET}\"\nmax_token_ttl = \"1h\"\n"
        ))
        .start()
        .await;
    let ch = channel("priv:api");
    let request = json!({"user": "7", "channels": ["priv:*"], "ttl": 60, "info": {"name": "Ann"}});

    for key in [None, Some("wrong")] {
        let r = s
            .post("/api/tokens")
            .header("Content-Type", "application/json")
            .body(request.to_string());
        with_key(r, key)
            .send()
            .await
            .assert_error(401, "unauthorized");
    }

    let resp = s
        .post("/api/tokens")
        .header("Content-Type", "application/json")
        .body(request.to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let v = resp.json();
    let t = v["token"].as_str().expect("token").to_string();
    let exp = v["expires_at"].as_u64().expect("expires_at");
    assert!(
        exp >= now() + 55 && exp <= now() + 61,
        "expires_at {exp}, now {}",
        now()
    );

    let mut ws = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&t))])
        .await;
    let (mut sess, reply) = Session::connected(&s, Via::Ws, Some(&t)).await;
    assert_eq!(reply["user"], "7");
    assert_eq!(reply["expires_at"], exp);
    sess.ok("subscribe", json!({"channel": ch})).await;
    let id = s.publish_text(&ch, "minted").await;
    assert_eq!(ws.next_json().await["id"], id.as_str());
    sess.push_until("message", |v| v["id"] == id.as_str()).await;

    let resp = s
        .post("/api/tokens")
        .header("Content-Type", "application/json")
        .body(json!({"user": "7", "ttl": 7200}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 400, "ttl over max_token_ttl: {}", resp.text());
    assert!(resp.json()["error"]["code"].is_string(), "{}", resp.text());
}

#[tokio::test]
async fn api_tokens_without_hmac_secret_work_on_this_process() {
    let s = Server::builder().extra_config(PRIVATE_NS).start().await;
    let ch = channel("priv:own");
    let resp = s
        .post("/api/tokens")
        .header("Content-Type", "application/json")
        .body(json!({"user": "8", "channels": [ch]}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let t = resp.json()["token"].as_str().expect("token").to_string();
    let mut ws = s
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer(&t))])
        .await;
    // A token made elsewhere with some secret is not accepted.
    assert_ws_refused(
        s.try_ws(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&token("8", &[&ch])))],
        )
        .await,
        401,
        "invalid_token",
        "a token signed with an unconfigured secret",
    );
    let id = s.publish_text(&ch, "own").await;
    assert_eq!(ws.next_json().await["id"], id.as_str());
}

// ---------------------------------------------------------------------------
// Tickets
// ---------------------------------------------------------------------------

async fn ticket_for(s: &Server, header: (&str, &str)) -> (String, u64) {
    let resp = s
        .post("/auth/ticket")
        .header(header.0, header.1)
        .send()
        .await;
    assert_eq!(resp.status, 201, "POST /auth/ticket: {}", resp.text());
    let v = resp.json();
    (
        v["ticket"].as_str().expect("ticket").to_string(),
        v["expires_at"].as_u64().expect("expires_at"),
    )
}

#[tokio::test]
async fn ticket_opens_a_channel_url_once() {
    let s = token_server("5s").await;
    let ch = channel("priv:ticket");
    let t = token("u1", &["priv:*"]);
    let (ticket, exp) = ticket_for(&s, ("Authorization", &bearer(&t))).await;
    assert!(
        exp <= now() + 31 && exp + 5 >= now() + 30,
        "ticket expires_at {exp}"
    );

    // EventSource style: no header but Accept.
    let mut sse = s.sse(&format!("/sub/{ch}?ticket={ticket}"), &[]).await;
    answer(
        s.get(&format!("/sub/{ch}?ticket={ticket}&timeout=0")),
        "second use, long-poll",
    )
    .await
    .assert_error(401, "ticket_used");
    assert_ws_refused(
        s.try_ws(&format!("/sub/{ch}?ticket={ticket}"), &[]).await,
        401,
        "ticket_used",
        "second use, WS",
    );

    // A ticket traded for the cookie opens a WebSocket, once.
    let (ticket2, _) = ticket_for(&s, ("Cookie", &cookie(&t))).await;
    let mut ws = s.ws(&format!("/sub/{ch}?ticket={ticket2}")).await;
    assert_ws_refused(
        s.try_ws(&format!("/sub/{ch}?ticket={ticket2}"), &[]).await,
        401,
        "ticket_used",
        "second use of the cookie ticket",
    );

    let id = s.publish_text(&ch, "by ticket").await;
    assert_eq!(sse_message(&mut sse, &id).await.data, "by ticket");
    assert_eq!(ws.next_json().await["id"], id.as_str());
}

#[tokio::test]
async fn a_connection_opened_by_ticket_lives_as_long_as_the_token() {
    // The ticket's short life bounds when it may be redeemed; the stream it
    // opened stands for the token (an EventSource that is closed would
    // reconnect with the same, now used, ticket and fail for good).
    let s = Server::builder()
        .extra_config(&format!(
            "{PRIVATE_NS}\n[auth]\nhmac_secret = \"{SECRET}\"\nleeway = \"0s\"\nticket_ttl = \"1s\"\n"
        ))
        .start()
        .await;
    let ch = channel("priv:tlife");
    let t = token("u1", &["priv:*"]);
    let (ticket, ticket_exp) = ticket_for(&s, ("Authorization", &bearer(&t))).await;
    let mut sse = s.sse(&format!("/sub/{ch}?ticket={ticket}"), &[]).await;
    let (ticket2, _) = ticket_for(&s, ("Authorization", &bearer(&t))).await;
    let mut sess = Session::open(&s, Via::Sse, &format!("?ticket={ticket2}"), &[]).await;
    sess.ok("subscribe", json!({"channel": ch})).await;

    // Past the ticket's expiry (plus a margin), with the token still valid for an hour.
    let quiet = Duration::from_millis(((ticket_exp + 1) * 1000).saturating_sub(now_ms()) + 300);
    let closed = tokio::time::timeout(quiet, async {
        loop {
            match sse.next_item(quiet + WAIT).await {
                Some(SseItem::Event(e)) => return format!("{e:?}"),
                Some(_) => continue,
                None => return "the end of the stream".to_string(),
            }
        }
    })
    .await;
    let session_closed = tokio::time::timeout(Duration::from_millis(200), sess.push()).await;
    assert!(
        closed.is_err() && session_closed.is_err(),
        "streams opened by ticket (token valid for an hour) ended when the ticket expired: \
         channel SSE got {closed:?}; session got {session_closed:?}"
    );
    let id = s.publish_text(&ch, "still open").await;
    sse_message(&mut sse, &id).await;
    sess.push_until("message", |v| v["id"] == id.as_str()).await;
}

#[tokio::test]
async fn tickets_and_tokens_are_not_interchangeable() {
    let s = token_server("5s").await;
    let ch = channel("priv:kinds");
    let t = token("u1", &["priv:*"]);
    let (ticket, _) = ticket_for(&s, ("Authorization", &bearer(&t))).await;

    // A ticket where a token goes.
    let (status, body) = ws_refusal(
        s.try_ws(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&ticket))],
        )
        .await,
        "ticket as Bearer",
    );
    assert_eq!(status, 401, "ticket as Bearer: {body}");
    answer(
        sse_req(&s, &format!("/sub/{ch}")).header("Cookie", &cookie(&ticket)),
        "ticket as cookie",
    )
    .await
    .assert_error(401, "invalid_token");
    let mut sess = Session::open(&s, Via::Ws, "", &[]).await;
    assert_eq!(
        sess.refused_code("connect", json!({"token": ticket})).await,
        "invalid_token"
    );
    let resp = s
        .post("/auth/ticket")
        .header("Authorization", &bearer(&ticket))
        .send()
        .await;
    assert_eq!(
        resp.status,
        401,
        "a ticket traded for a ticket: {}",
        resp.text()
    );

    // A token where a ticket goes.
    answer(
        s.get(&format!("/sub/{ch}?ticket={t}&timeout=0")),
        "token as ?ticket=",
    )
    .await
    .assert_error(401, "invalid_token");
    let (status, _) = Session::refused(&s, Via::Sse, &format!("?ticket={t}"), &[]).await;
    assert_eq!(status, 401, "token as ?ticket= on /connection/sse");

    // No credential, or an expired one, buys no ticket.
    let resp = s.post("/auth/ticket").send().await;
    assert_eq!(resp.status, 401, "ticket without a token: {}", resp.text());
    let expired = hs256(&claims(Some("u1"), &["priv:*"], -60));
    s.post("/auth/ticket")
        .header("Authorization", &bearer(&expired))
        .send()
        .await
        .assert_error(401, "token_expired");

    // A ticket never outlives its token.
    let short = hs256(&claims(Some("u1"), &["priv:*"], 10));
    let (_, exp) = ticket_for(&s, ("Authorization", &bearer(&short))).await;
    assert!(
        exp <= now() + 10,
        "ticket expires_at {exp} beyond the token's"
    );

    // The unused ticket still works where tickets go.
    let _ok = s.sse(&format!("/sub/{ch}?ticket={ticket}"), &[]).await;
}

#[tokio::test]
async fn ticket_opens_a_session_stream_once() {
    let s = token_server("5s").await;
    let ch = channel("priv:sticket");
    let t = token("u5", &["priv:*"]);
    let (ticket, _) = ticket_for(&s, ("Authorization", &bearer(&t))).await;

    let mut sess = Session::open(&s, Via::Sse, &format!("?ticket={ticket}"), &[]).await;
    // No connect needed: the ticket is the session's identity.
    sess.ok("subscribe", json!({"channel": ch})).await;
    for via in [Via::Sse, Via::Ws] {
        let (status, body) = Session::refused(&s, via, &format!("?ticket={ticket}"), &[]).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("ticket_used")),
            "{via:?}: {body}"
        );
    }
    let (ticket2, _) = ticket_for(&s, ("Authorization", &bearer(&t))).await;
    let mut ws_sess = Session::open(&s, Via::Ws, &format!("?ticket={ticket2}"), &[]).await;
    ws_sess.ok("subscribe", json!({"channel": ch})).await;

    let id = s.publish_text(&ch, "session by ticket").await;
    sess.push_until("SSE session message", |v| v["id"] == id.as_str())
        .await;
    ws_sess
        .push_until("WS session message", |v| v["id"] == id.as_str())
        .await;

    // A long-poll session opens with a ticket too, once.
    let (ticket3, _) = ticket_for(&s, ("Authorization", &bearer(&t))).await;
    let resp = s
        .post(&format!("/connection/longpoll?ticket={ticket3}"))
        .send()
        .await;
    assert_eq!(
        resp.status,
        201,
        "long-poll session by ticket: {}",
        resp.text()
    );
    let sid = resp.json()["session"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    s.post(&format!("/connection/longpoll?ticket={ticket3}"))
        .send()
        .await
        .assert_error(401, "ticket_used");
    let resp = s
        .post(&format!("/connection/{sid}"))
        .header("Content-Type", "application/json")
        .body(json!({"id": 1, "subscribe": {"channel": ch}}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    let frames = eventually(WAIT, "the subscribe reply on the long-poll", || async {
        let v = s
            .poll(&format!("/connection/longpoll/{sid}?timeout=1"))
            .await;
        match v["frames"].as_array() {
            Some(f) if !f.is_empty() => Ok(f.clone()),
            _ => Err(v.to_string()),
        }
    })
    .await;
    assert_eq!(frames[0]["id"], 1, "{frames:?}");
    assert_eq!(
        frames[0]["subscribe"]["channel"],
        ch.as_str(),
        "ticket identity grants the channel: {frames:?}"
    );
}

// ---------------------------------------------------------------------------
// Token expiry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expiring_token_closes_live_connections_with_4007() {
    let s = token_server("0s").await;
    let ch = channel("priv:expiry");
    let short = hs256(&claims(Some("short"), &["priv:*"], 3));
    let b = bearer(&short);
    let long = token("long", &["priv:*"]);
    let path = format!("/sub/{ch}");

    let mut keeper = s.ws_with(&path, &[("Authorization", &bearer(&long))]).await;
    let mut ws = s.ws_with(&path, &[("Authorization", &b)]).await;
    let mut sse = s.sse(&path, &[("Authorization", &b)]).await;
    let mut nd = ndjson_with(&s, &path, &[("Authorization", &b)]).await;
    let (mut sess, _) = Session::connected(&s, Via::Ws, Some(&short)).await;
    sess.ok("subscribe", json!({"channel": ch})).await;
    let mut sess_sse = Session::open(&s, Via::Sse, "", &[("Authorization", &b)]).await;
    sess_sse.ok("subscribe", json!({"channel": ch})).await;

    let limit = Duration::from_secs(8);
    let (code, _) = ws.expect_close(limit).await;
    assert_eq!(code, 4007, "per-channel WebSocket close code");
    let e = sse_until(&mut sse, "SSE disconnect event", |e| {
        e.event == "disconnect"
    })
    .await;
    let v: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(v["code"], 4007, "SSE disconnect {v}");
    sse.expect_end(WAIT).await;
    let v = nd_until(&mut nd, "NDJSON disconnect", |v| {
        v.get("disconnect").is_some()
    })
    .await;
    assert_eq!(v["disconnect"]["code"], 4007, "{v}");
    sess.expect_end(4007, limit).await;
    sess_sse.expect_end(4007, limit).await;

    // The connection whose token is still good keeps receiving.
    let id = s.publish_text(&ch, "still here").await;
    assert_eq!(keeper.next_json().await["id"], id.as_str());
}

#[tokio::test]
async fn session_refresh_keeps_it_open_past_the_old_expiry() {
    let s = token_server("0s").await;
    let ch = channel("priv:refresh");
    let short_claims = claims(Some("u1"), &["priv:*"], 2);
    let old_exp = short_claims["exp"].as_u64().expect("exp");
    let short = hs256(&short_claims);
    let fresh = token("u1", &["priv:*"]);

    let (mut ws_sess, _) = Session::connected(&s, Via::Ws, Some(&short)).await;
    let mut sse_sess = Session::open(&s, Via::Sse, "", &[("Authorization", &bearer(&short))]).await;
    for sess in [&mut ws_sess, &mut sse_sess] {
        sess.ok("subscribe", json!({"channel": ch})).await;
        let other_user = token("u2", &["priv:*"]);
        assert_eq!(
            sess.refused_code("refresh", json!({"token": other_user}))
                .await,
            "forbidden"
        );
        let expired = hs256(&claims(Some("u1"), &["priv:*"], -30));
        assert_eq!(
            sess.refused_code("refresh", json!({"token": expired}))
                .await,
            "token_expired"
        );
        let r = sess.ok("refresh", json!({"token": fresh})).await;
        assert!(
            r["expires_at"].as_u64().is_some_and(|e| e > now() + 3000),
            "refresh reply {r}"
        );
    }
    // Past the old expiry (plus a margin) nothing closes the sessions.
    let wait = Duration::from_millis(((old_exp + 1) * 1000).saturating_sub(now_ms()) + 300);
    ws_sess.expect_silence(wait).await;
    sse_sess.expect_silence(Duration::from_millis(200)).await;

    let id = s.publish_text(&ch, "after the old expiry").await;
    for sess in [&mut ws_sess, &mut sse_sess] {
        sess.push_until("message after refresh", |v| v["id"] == id.as_str())
            .await;
        sess.ok("ping", json!({})).await;
    }
}

#[tokio::test]
async fn refresh_replaces_the_grants_of_the_session() {
    let s = token_server("5s").await;
    let a = channel("priv:a");
    let b = channel("priv:b");
    let narrow = token("u1", &[a.as_str()]);
    let wide = token("u1", &["priv:*"]);
    let (mut sess, _) = Session::connected(&s, Via::Ws, Some(&narrow)).await;
    sess.ok("subscribe", json!({"channel": a})).await;
    assert_eq!(
        sess.refused_code("subscribe", json!({"channel": b})).await,
        "forbidden"
    );
    sess.ok("refresh", json!({"token": wide})).await;
    sess.ok("subscribe", json!({"channel": b})).await;
    let id = s.publish_text(&b, "widened").await;
    sess.push_until("message on the newly granted channel", |v| {
        v["id"] == id.as_str()
    })
    .await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Personal channels and offline queues
// ---------------------------------------------------------------------------

async fn user_server() -> Server {
    Server::builder()
        .extra_config(&format!("{USER_NS}{}", auth("5s")))
        .start()
        .await
}

async fn user_publish(s: &Server, user: &str, data: Value) -> Value {
    let resp = s
        .post(&format!("/api/users/{user}/publish"))
        .header("Content-Type", "application/json")
        .body(json!({ "data": data }).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "user publish: {}", resp.text());
    resp.json()
}

#[tokio::test]
async fn personal_channel_belongs_to_its_user() {
    let s = user_server().await;
    let me = channel("u");
    let uch = format!("user:{me}");
    let path = format!("/sub/{uch}");
    let mut mine = s
        .ws_with(&path, &[("Authorization", &bearer(&token(&me, &[])))])
        .await;

    let other = bearer(&token("someone-else", &[]));
    let granted_other = bearer(&token("someone-else", &["user:*", "*"]));
    for (name, headers) in [
        ("another user", vec![("Authorization", other.as_str())]),
        (
            "another user granted user:*",
            vec![("Authorization", granted_other.as_str())],
        ),
        ("no token", vec![]),
    ] {
        assert_ws_refused(
            s.try_ws(&path, &headers).await,
            403,
            "forbidden",
            &format!("{name}, WS"),
        );
        let mut r = sse_req(&s, &path);
        for (k, v) in &headers {
            r = r.header(k, v);
        }
        answer(r, name).await.assert_error(403, "forbidden");
        let mut r = s.get(&format!("{path}?timeout=0"));
        for (k, v) in &headers {
            r = r.header(k, v);
        }
        answer(r, name).await.assert_error(403, "forbidden");
    }
    for t in [Some(token("someone-else", &["*"])), None] {
        let (mut sess, _) = Session::connected(&s, Via::Ws, t.as_deref()).await;
        assert_eq!(
            sess.refused_code("subscribe", json!({"channel": uch}))
                .await,
            "forbidden"
        );
    }
    let v = user_publish(&s, &me, json!({"hello": "me"})).await;
    assert_eq!(v["queued"], false, "{v}");
    assert_eq!(v["channel"], uch.as_str(), "{v}");
    assert_eq!(mine.next_json().await["data"], json!({"hello": "me"}));
}

#[tokio::test]
async fn offline_queue_is_delivered_in_order_then_live() {
    let s = user_server().await;
    for via in ["ws", "session"] {
        let user = channel("q");
        let uch = format!("user:{user}");
        for n in 1..=3 {
            let v = user_publish(&s, &user, json!({ "n": n })).await;
            assert_eq!(v["queued"], true, "offline publish {n}: {v}");
            assert_eq!(v["subscribers"], 0, "{v}");
        }
        let t = token(&user, &[]);
        let mut got = Vec::new();
        if via == "ws" {
            let mut ws = s
                .ws_with(&format!("/sub/{uch}"), &[("Authorization", &bearer(&t))])
                .await;
            for _ in 1..=3 {
                got.push(ws.next_json().await["data"]["n"].clone());
            }
            let v = user_publish(&s, &user, json!({"n": 4})).await;
            assert_eq!(
                (v["queued"].clone(), v["subscribers"].clone()),
                (json!(false), json!(1)),
                "{v}"
            );
            got.push(ws.next_json().await["data"]["n"].clone());
        } else {
            let mut sess = Session::open(&s, Via::Sse, "", &[("Authorization", &bearer(&t))]).await;
            sess.ok("subscribe", json!({"channel": uch})).await;
            for _ in 1..=3 {
                got.push(sess.push().await["data"]["n"].clone());
            }
            let v = user_publish(&s, &user, json!({"n": 4})).await;
            assert_eq!(v["queued"], false, "{v}");
            got.push(sess.push().await["data"]["n"].clone());
        }
        assert_eq!(
            got,
            vec![json!(1), json!(2), json!(3), json!(4)],
            "{via}: queued then live"
        );
    }
}

#[tokio::test]
async fn offline_queue_is_bounded_and_delivered_once() {
    let s = user_server().await;
    let user = channel("bq");
    let uch = format!("user:{user}");
    let t = bearer(&token(&user, &[]));

    // Online, but not following the personal channel: still queued.
    let mut elsewhere = s
        .ws_with(
            &format!("/sub/{}", channel("news")),
            &[("Authorization", &t)],
        )
        .await;
    for n in 1..=12 {
        let v = user_publish(&s, &user, json!({ "n": n })).await;
        assert_eq!(
            v["queued"], true,
            "publish {n} while not following {uch}: {v}"
        );
    }
    // The user: namespace keeps 10: the oldest two are gone.
    let mut ws = s
        .ws_with(&format!("/sub/{uch}"), &[("Authorization", &t)])
        .await;
    let mut got = Vec::new();
    while got.len() < 10 {
        let v = ws.next_json().await;
        if v.get("gap").is_none() {
            got.push(
                v["data"]["n"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("queued message {v}")),
            );
        }
    }
    assert_eq!(
        got,
        (3..=12).collect::<Vec<u64>>(),
        "the bounded queue, in order"
    );
    ws.close().await;
    s.wait_subscribers(&uch, 0, WAIT).await;

    // The queue was delivered: the next subscribe starts with live messages.
    let mut again = s
        .ws_with(&format!("/sub/{uch}"), &[("Authorization", &t)])
        .await;
    let v = user_publish(&s, &user, json!({"n": "live"})).await;
    assert_eq!(v["queued"], false, "{v}");
    let first = again.next_json().await;
    assert_eq!(
        first["data"]["n"], "live",
        "a second subscribe must not get the already delivered queue again: {first}"
    );
    elsewhere.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn user_disconnect_closes_that_users_connections_only() {
    let s = user_server().await;
    let target = channel("t");
    let bystander = channel("b");
    let news = channel("news");
    let tt = bearer(&token(&target, &[]));

    let mut t_personal = s
        .ws_with(&format!("/sub/user:{target}"), &[("Authorization", &tt)])
        .await;
    let mut t_news = s
        .ws_with(&format!("/sub/{news}"), &[("Authorization", &tt)])
        .await;
    let mut t_sse = s
        .sse(&format!("/sub/{news}"), &[("Authorization", &tt)])
        .await;
    let (mut t_sess, _) = Session::connected(&s, Via::Ws, Some(&token(&target, &[]))).await;
    t_sess.ok("subscribe", json!({"channel": news})).await;
    let mut t_sess_sse = Session::open(&s, Via::Sse, "", &[("Authorization", &tt)]).await;
    t_sess_sse.ok("subscribe", json!({"channel": news})).await;

    let mut b_ws = s
        .ws_with(
            &format!("/sub/{news}"),
            &[("Authorization", &bearer(&token(&bystander, &[])))],
        )
        .await;
    let mut anon_sse = s.sse(&format!("/sub/{news}"), &[]).await;
    let (mut b_sess, _) = Session::connected(&s, Via::Ws, Some(&token(&bystander, &[]))).await;
    b_sess.ok("subscribe", json!({"channel": news})).await;

    let resp = s
        .post(&format!("/api/users/{target}/disconnect"))
        .send()
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    assert_eq!(
        t_personal.expect_close(WAIT).await.0,
        4006,
        "personal channel WS"
    );
    assert_eq!(
        t_news.expect_close(WAIT).await.0,
        4006,
        "the user's WS on another channel"
    );
    let e = sse_until(&mut t_sse, "SSE disconnect", |e| e.event == "disconnect").await;
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).expect("json")["code"],
        4006
    );
    t_sess.expect_end(4006, WAIT).await;
    t_sess_sse.expect_end(4006, WAIT).await;

    let id = s.publish_text(&news, "others stay").await;
    assert_eq!(b_ws.next_json().await["id"], id.as_str());
    sse_message(&mut anon_sse, &id).await;
    b_sess
        .push_until("bystander session message", |v| v["id"] == id.as_str())
        .await;
}

// ---------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------

async fn presence(s: &Server, ch: &str) -> Value {
    let resp = s.get(&format!("/api/presence/{ch}")).send().await;
    assert_eq!(resp.status, 200, "presence: {}", resp.text());
    resp.json()
}

fn user_entry<'a>(p: &'a Value, user: &str) -> Option<&'a Value> {
    p["users"].as_array()?.iter().find(|u| u["user"] == user)
}

#[tokio::test]
async fn presence_lists_users_with_connection_counts_and_info() {
    let s = Server::builder()
        .extra_config(&format!("{ROOM_NS}{}", auth("5s")))
        .start()
        .await;
    let room = channel("room:p");
    let path = format!("/sub/{room}");
    let ann = token_with_info("ann", &[], json!({"name": "Ann"}));
    let bob = token_with_info("bob", &[], json!({"name": "Bob", "role": "admin"}));

    let ann_ws = s.ws_with(&path, &[("Authorization", &bearer(&ann))]).await;
    let ann_sse = s.sse(&path, &[("Cookie", &cookie(&ann))]).await;
    let (mut bob_sess, _) = Session::connected(&s, Via::Ws, Some(&bob)).await;
    bob_sess.ok("subscribe", json!({"channel": room})).await;
    let _anon = s.ws(&path).await;

    let p = eventually(WAIT, "presence of 4 connections", || async {
        let p = presence(&s, &room).await;
        if p["connections"] == 4 {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    })
    .await;
    assert_eq!(p["enabled"], true, "{p}");
    assert_eq!(p["anonymous"], 1, "{p}");
    let a = user_entry(&p, "ann").unwrap_or_else(|| panic!("ann in {p}"));
    assert_eq!(
        (a["connections"].clone(), a["info"].clone()),
        (json!(2), json!({"name": "Ann"})),
        "{p}"
    );
    let b = user_entry(&p, "bob").unwrap_or_else(|| panic!("bob in {p}"));
    assert_eq!(
        (b["connections"].clone(), b["info"].clone()),
        (json!(1), json!({"name": "Bob", "role": "admin"})),
        "{p}"
    );
    assert_eq!(p["users"].as_array().map(Vec::len), Some(2), "{p}");

    let sp = bob_sess.ok("presence", json!({"channel": room})).await;
    assert_eq!(sp["connections"], 4, "session presence {sp}");
    assert_eq!(
        user_entry(&sp, "ann").map(|a| a["connections"].clone()),
        Some(json!(2)),
        "{sp}"
    );

    // Leaving connections leave presence.
    ann_ws.close().await;
    eventually(WAIT, "ann down to one connection", || async {
        let p = presence(&s, &room).await;
        match user_entry(&p, "ann") {
            Some(a) if a["connections"] == 1 => Ok(()),
            _ => Err(p.to_string()),
        }
    })
    .await;
    drop(ann_sse);
    eventually(WAIT, "ann gone from presence", || async {
        let p = presence(&s, &room).await;
        if user_entry(&p, "ann").is_none() && p["connections"] == 2 {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await;

    let plain = channel("plain");
    let p = presence(&s, &plain).await;
    assert_eq!(
        p["enabled"], false,
        "presence off outside presence namespaces: {p}"
    );
}

#[tokio::test]
async fn join_and_leave_notices_reach_every_kind_of_subscriber() {
    let s = Server::builder()
        .extra_config(&format!("{ROOM_NS}{}", auth("5s")))
        .start()
        .await;
    let room = channel("room:j");
    let path = format!("/sub/{room}");
    let mut w_ws = s.ws(&path).await;
    let mut w_nd = ndjson_with(&s, &path, &[]).await;
    let mut w_sse = s.sse(&path, &[]).await;
    let (mut w_sess, _) = Session::connected(&s, Via::Ws, None).await;
    w_sess.ok("subscribe", json!({"channel": room})).await;

    let carol = token_with_info("carol", &[], json!({"name": "Carol"}));
    let carol_ws = s
        .ws_with(&path, &[("Authorization", &bearer(&carol))])
        .await;

    let is = |kind: &'static str| {
        let room = room.clone();
        move |v: &Value| v["channel"] == room.as_str() && v[kind]["user"] == "carol"
    };
    let join = ws_until(&mut w_ws, "join on WS", is("join")).await;
    assert_eq!(join["join"]["info"], json!({"name": "Carol"}), "{join}");
    let client = join["join"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    nd_until(&mut w_nd, "join on NDJSON", is("join")).await;
    let e = sse_until(&mut w_sse, "join on SSE", |e| {
        e.event == "join" && e.data.contains("carol")
    })
    .await;
    let v: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(v["join"]["client"], client.as_str(), "{v}");
    let j = w_sess.push_until("join on session", is("join")).await;
    assert_eq!(j["join"]["client"], client.as_str(), "{j}");

    carol_ws.close().await;
    let leave = ws_until(&mut w_ws, "leave on WS", is("leave")).await;
    assert_eq!(leave["leave"]["client"], client.as_str(), "{leave}");
    nd_until(&mut w_nd, "leave on NDJSON", is("leave")).await;
    sse_until(&mut w_sse, "leave on SSE", |e| {
        e.event == "leave" && e.data.contains("carol")
    })
    .await;
    w_sess.push_until("leave on session", is("leave")).await;

    // A session subscriber's own leave, when its connection ends.
    let dave = token_with_info("dave", &[], json!({"name": "Dave"}));
    let (mut dave_sess, _) = Session::connected(&s, Via::Ws, Some(&dave)).await;
    dave_sess.ok("subscribe", json!({"channel": room})).await;
    ws_until(&mut w_ws, "dave joins", |v| v["join"]["user"] == "dave").await;
    drop(dave_sess);
    ws_until(&mut w_ws, "dave leaves", |v| v["leave"]["user"] == "dave").await;
    eventually(WAIT, "nobody named left in presence", || async {
        let p = presence(&s, &room).await;
        if p["users"].as_array().is_some_and(Vec::is_empty) {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_hook_refusal_is_403_denied_and_others_go_on() {
    let backend = HookBackend::start(|body| {
        if body["channel"]
            .as_str()
            .is_some_and(|c| c.contains("blocked"))
        {
            HookAnswer::Json(json!({"allow": false, "reason": "blocked by policy"}))
        } else {
            HookAnswer::Json(json!({"allow": true}))
        }
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["subscribe"], "deny", "2s")
        ))
        .start()
        .await;
    let ok = channel("fine");
    let blocked = channel("blocked");
    let t = bearer(&token("u1", &[]));
    let mut good = s
        .ws_with(&format!("/sub/{ok}"), &[("Authorization", &t)])
        .await;
    let call = backend
        .wait_call("subscribe hook for the allowed channel", |c| {
            c.body["channel"] == ok.as_str()
        })
        .await;
    assert_eq!(call.event_header.as_deref(), Some("subscribe"), "{call:?}");
    assert_eq!(call.body["event"], "subscribe");
    assert_eq!(call.body["user"], "u1");
    assert!(
        call.body["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{call:?}"
    );

    let path = format!("/sub/{blocked}");
    let body = assert_ws_refused(s.try_ws(&path, &[]).await, 403, "denied", "WS");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("blocked by policy")),
        "the backend's reason: {body}"
    );
    answer(sse_req(&s, &path), "SSE")
        .await
        .assert_error(403, "denied");
    answer(s.get(&format!("{path}?timeout=0")), "long-poll")
        .await
        .assert_error(403, "denied");
    let mut sessions = Vec::new();
    for via in [Via::Ws, Via::Sse] {
        let (mut sess, _) = Session::connected(&s, via, None).await;
        assert_eq!(
            sess.refused_code("subscribe", json!({"channel": blocked}))
                .await,
            "denied",
            "{via:?}"
        );
        sess.ok("subscribe", json!({"channel": ok})).await;
        sessions.push(sess);
    }
    assert_eq!(s.info(&blocked).await["subscribers"], 0);

    let id = s.publish_text(&ok, "go on").await;
    assert_eq!(good.next_json().await["id"], id.as_str());
    for sess in &mut sessions {
        sess.push_until("message", |v| v["id"] == id.as_str()).await;
    }
}

#[tokio::test]
async fn publish_hook_rewrites_client_publishes_and_can_refuse_them() {
    let backend = HookBackend::start(|body| {
        if body["data"]["text"] == "bad" {
            HookAnswer::Json(json!({"allow": false, "reason": "no bad words"}))
        } else {
            HookAnswer::Json(
                json!({"allow": true, "data": {"checked": true, "original": body["data"]}}),
            )
        }
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{CHAT_NS}{}{}",
            auth("5s"),
            hooks(&backend.url, &["publish"], "deny", "2s")
        ))
        .start()
        .await;
    let ch = channel("chat:hook");
    let mut sub = s.ws(&format!("/sub/{ch}")).await;
    let mut listener = Session::open(&s, Via::Sse, "", &[]).await;
    listener.ok("subscribe", json!({"channel": ch})).await;
    let (mut author, _) = Session::connected(&s, Via::Ws, Some(&token("writer", &[]))).await;

    let r = author
        .ok("publish", json!({"channel": ch, "data": {"text": "hi"}}))
        .await;
    let id = r["id"].as_str().expect("id").to_string();
    let rewritten = json!({"checked": true, "original": {"text": "hi"}});
    let got = sub.next_json().await;
    assert_eq!(
        (got["id"].clone(), got["data"].clone()),
        (json!(id), rewritten.clone()),
        "{got}"
    );
    let got = listener
        .push_until("rewritten message", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(got["data"], rewritten);
    let call = backend
        .wait_call("publish hook", |c| c.body["event"] == "publish")
        .await;
    assert_eq!(call.body["user"], "writer");
    assert_eq!(call.body["channel"], ch.as_str());
    assert_eq!(call.body["data"], json!({"text": "hi"}));

    assert_eq!(
        author
            .refused_code("publish", json!({"channel": ch, "data": {"text": "bad"}}))
            .await,
        "denied"
    );
    // Outside a client_publish namespace the hook is not even asked.
    let before = backend.calls_for("publish").len();
    let news = channel("news");
    assert_eq!(
        author
            .refused_code("publish", json!({"channel": news, "data": 1}))
            .await,
        "forbidden"
    );
    assert_eq!(backend.calls_for("publish").len(), before);
    assert_eq!(
        s.info(&ch).await["messages"],
        1,
        "the refused publish stored nothing"
    );
    let next = s.publish_text(&ch, "backend").await;
    assert_eq!(
        sub.next_json().await["id"],
        next.as_str(),
        "nothing was delivered in between"
    );
    // Backend publishes are not client publishes: no hook call.
    assert_eq!(backend.calls_for("publish").len(), before);
}

#[tokio::test]
async fn connect_hook_refusal_ends_the_session_with_4006() {
    let backend = HookBackend::start(|body| {
        if body["user"] == "mallory" {
            HookAnswer::Json(json!({"allow": false, "reason": "banned"}))
        } else {
            HookAnswer::Empty
        }
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["connect"], "deny", "2s")
        ))
        .start()
        .await;
    let ch = channel("c");
    let mallory = token_with_info("mallory", &[], json!({"n": "M"}));

    let mut ws_sess = Session::open(&s, Via::Ws, "", &[]).await;
    let reply = ws_sess.call("connect", json!({"token": mallory})).await;
    assert_eq!(reply["error"]["code"], "denied", "{reply}");
    ws_sess.expect_end(4006, WAIT).await;

    let mut sse_sess =
        Session::open(&s, Via::Sse, "", &[("Authorization", &bearer(&mallory))]).await;
    let reply = sse_sess.call("subscribe", json!({"channel": ch})).await;
    assert_eq!(reply["error"]["code"], "denied", "{reply}");
    sse_sess.expect_end(4006, WAIT).await;

    assert_ws_refused(
        s.try_ws(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&mallory))],
        )
        .await,
        403,
        "denied",
        "per-channel WS of a refused user",
    );

    let alice = token_with_info("alice", &[], json!({"n": "A"}));
    let (mut ok, reply) = Session::connected(&s, Via::Ws, Some(&alice)).await;
    assert_eq!(reply["user"], "alice");
    ok.ok("subscribe", json!({"channel": ch})).await;
    let call = backend
        .wait_call("alice's connect", |c| c.body["user"] == "alice")
        .await;
    assert_eq!(call.event_header.as_deref(), Some("connect"));
    assert_eq!(call.body["info"], json!({"n": "A"}));
    assert!(call.body["transport"].is_string(), "{call:?}");
    let id = s.publish_text(&ch, "welcome").await;
    ok.push_until("message", |v| v["id"] == id.as_str()).await;
}

#[tokio::test]
async fn hook_backend_down_denies_or_allows_per_on_error() {
    let silent = HookBackend::start(|_| HookAnswer::Silent).await;
    let failing = HookBackend::start(|_| HookAnswer::Status(500)).await;
    let dead = dead_url();
    let events = ["subscribe", "rpc"];
    for (name, url, on_error) in [
        ("nothing listening", dead.as_str(), "deny"),
        ("never answers", silent.url.as_str(), "deny"),
        ("answers 500", failing.url.as_str(), "deny"),
        ("nothing listening", dead.as_str(), "allow"),
    ] {
        let s = Server::builder()
            .extra_config(&hooks(url, &events, on_error, "300ms"))
            .start()
            .await;
        let ch = channel("h");
        let path = format!("/sub/{ch}");
        let what = format!("backend {name}, on_error={on_error}");
        let (mut sess, _) = Session::connected(&s, Via::Ws, None).await;
        if on_error == "deny" {
            assert_ws_refused(s.try_ws(&path, &[]).await, 503, "hook_unavailable", &what);
            answer(sse_req(&s, &path), &what)
                .await
                .assert_error(503, "hook_unavailable");
            answer(s.get(&format!("{path}?timeout=0")), &what)
                .await
                .assert_error(503, "hook_unavailable");
            assert_eq!(
                sess.refused_code("subscribe", json!({"channel": ch})).await,
                "hook_unavailable",
                "{what}"
            );
        } else {
            let mut ws = s.ws(&path).await;
            sess.ok("subscribe", json!({"channel": ch})).await;
            let id = s.publish_text(&ch, "allowed").await;
            assert_eq!(ws.next_json().await["id"], id.as_str(), "{what}");
            sess.push_until("message", |v| v["id"] == id.as_str()).await;
        }
        assert_eq!(
            sess.refused_code("rpc", json!({"method": "m", "params": {}}))
                .await,
            "hook_unavailable",
            "rpc, {what}"
        );
    }
}

#[tokio::test]
async fn rpc_is_forwarded_to_the_backend_and_answered() {
    let backend = HookBackend::start(|body| match body["method"].as_str() {
        Some("echo") => {
            HookAnswer::Json(json!({"result": {"params": body["params"], "user": body["user"]}}))
        }
        _ => HookAnswer::Json(json!({"error": {"code": "no_method", "message": "unknown method"}})),
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["rpc"], "deny", "2s")
        ))
        .start()
        .await;
    let (mut ws_sess, _) = Session::connected(&s, Via::Ws, Some(&token("u9", &[]))).await;
    let r = ws_sess
        .ok("rpc", json!({"method": "echo", "params": {"a": [1, 2]}}))
        .await;
    assert_eq!(
        r["result"],
        json!({"params": {"a": [1, 2]}, "user": "u9"}),
        "{r}"
    );
    let call = backend
        .wait_call("rpc call", |c| c.body["event"] == "rpc")
        .await;
    assert_eq!(call.event_header.as_deref(), Some("rpc"));
    assert_eq!(call.body["method"], "echo");
    assert!(call.body["client"].is_string(), "{call:?}");
    assert_eq!(
        ws_sess.refused_code("rpc", json!({"method": "nope"})).await,
        "rpc_error"
    );

    let (mut sse_sess, _) = Session::connected(&s, Via::Sse, None).await;
    let r = sse_sess
        .ok("rpc", json!({"method": "echo", "params": 5}))
        .await;
    assert_eq!(r["result"], json!({"params": 5, "user": null}), "{r}");

    let plain = Server::start().await;
    let (mut sess, _) = Session::connected(&plain, Via::Ws, None).await;
    assert_eq!(
        sess.refused_code("rpc", json!({"method": "echo"})).await,
        "not_available"
    );
}

#[tokio::test]
async fn disconnect_notifications_reach_the_backend() {
    let backend = HookBackend::start(|_| HookAnswer::Empty).await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["disconnect"], "deny", "2s")
        ))
        .start()
        .await;
    let ch = channel("d");
    let ws = s
        .ws_with(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&token("u11", &[])))],
        )
        .await;
    let (sess, _) = Session::connected(&s, Via::Ws, Some(&token("u12", &[]))).await;
    let sse_sess = Session::open(
        &s,
        Via::Sse,
        "",
        &[("Authorization", &bearer(&token("u13", &[])))],
    )
    .await;
    let sse = s
        .sse(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&token("u14", &[])))],
        )
        .await;
    assert!(
        backend.calls_for("disconnect").is_empty(),
        "{:?}",
        backend.calls()
    );

    ws.close().await;
    drop(sess);
    drop(sse_sess);
    drop(sse);
    for user in ["u11", "u12", "u13", "u14"] {
        let call = backend
            .wait_call(&format!("disconnect of {user}"), |c| {
                c.body["event"] == "disconnect" && c.body["user"] == user
            })
            .await;
        assert_eq!(call.event_header.as_deref(), Some("disconnect"));
        assert!(call.body["client"].is_string(), "{call:?}");
    }
}

// ---------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------

#[tokio::test]
async fn foreign_origin_is_refused_on_every_endpoint() {
    let s = Server::start().await;
    let ch = channel("o");
    let mut native = s.ws(&format!("/sub/{ch}")).await;
    let mut sess = Session::open(&s, Via::Sse, "", &[]).await;
    let sid = sess.http_id().expect("session id").to_string();
    let path = format!("/sub/{ch}");
    let own_port_trick = format!("http://{}.evil.example", s.addr);

    for origin in [
        "http://evil.example",
        "null",
        own_port_trick.as_str(),
        "https://127.0.0.1",
    ] {
        let o = [("Origin", origin)];
        let what = |w: &str| format!("Origin {origin} on {w}");
        assert_ws_refused(
            s.try_ws(&path, &o).await,
            403,
            "origin_not_allowed",
            &what("WS upgrade"),
        );
        assert_ws_refused(
            s.try_ws("/connection/websocket", &o).await,
            403,
            "origin_not_allowed",
            &what("session WS"),
        );
        for (req, w) in [
            (sse_req(&s, &path).header("Origin", origin), "SSE"),
            (
                s.get(&format!("{path}?timeout=0")).header("Origin", origin),
                "long-poll",
            ),
            (
                sse_req(&s, "/connection/sse").header("Origin", origin),
                "session SSE",
            ),
            (
                s.post("/connection/longpoll").header("Origin", origin),
                "session long-poll",
            ),
            (
                s.post(&format!("/connection/{sid}"))
                    .header("Origin", origin)
                    .body(r#"{"id":1,"subscribe":{"channel":"stolen"}}"#),
                "a command to an existing session",
            ),
            (
                s.post(&format!("/pub/{ch}"))
                    .header("Origin", origin)
                    .body("forged"),
                "/pub",
            ),
            (
                s.post("/api/publish")
                    .header("Origin", origin)
                    .header("Content-Type", "application/json")
                    .body(json!({"channel": ch, "data": "forged"}).to_string()),
                "/api/publish",
            ),
            (
                s.post("/auth/ticket").header("Origin", origin),
                "/auth/ticket",
            ),
        ] {
            answer(req, &what(w))
                .await
                .assert_error(403, "origin_not_allowed");
        }
    }
    // The session was not touched by the refused command; native clients go on.
    sess.ok("subscribe", json!({"channel": ch})).await;
    let id = s.publish_text(&ch, "genuine").await;
    let first = native.next_json().await;
    assert_eq!(
        first["id"],
        id.as_str(),
        "no forged message got through: {first}"
    );
    let first = sess.push().await;
    assert_eq!(first["id"], id.as_str(), "{first}");
}

#[tokio::test]
async fn same_origin_is_allowed() {
    let s = Server::start().await;
    let ch = channel("same");
    let origin = format!("http://{}", s.addr);
    let o = [("Origin", origin.as_str())];
    let mut ws = s.ws_with(&format!("/sub/{ch}"), &o).await;
    let mut sse = s.sse(&format!("/sub/{ch}"), &o).await;
    let mut sess = Session::open(&s, Via::Ws, "", &o).await;
    sess.ok("subscribe", json!({"channel": ch})).await;
    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Origin", &origin)
        .header("Content-Type", "text/plain")
        .body("same origin")
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let id = resp.json()["id"].as_str().expect("id").to_string();
    assert_eq!(ws.next_json().await["id"], id.as_str());
    sse_message(&mut sse, &id).await;
    sess.push_until("message", |v| v["id"] == id.as_str()).await;
}

#[tokio::test]
async fn allowed_origins_get_cors_headers_and_preflights() {
    let app = "https://app.example.com";
    let s = Server::builder()
        .set("allowed_origins", &json!([app]).to_string())
        .start()
        .await;
    let ch = channel("cors");
    let path = format!("/sub/{ch}");
    let o = [("Origin", app)];

    let mut sse = s.sse(&path, &o).await;
    assert_eq!(
        sse.http.header("access-control-allow-origin").as_deref(),
        Some(app)
    );
    assert_eq!(
        sse.http
            .header("access-control-allow-credentials")
            .as_deref(),
        Some("true")
    );
    let mut ws = s.ws_with(&path, &o).await;
    let resp = s
        .post("/connection/longpoll")
        .header("Origin", app)
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some(app)
    );
    let sid = resp.json()["session"]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let pre = s
        .req("OPTIONS", &format!("/connection/{sid}"))
        .header("Origin", app)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await;
    assert_eq!(pre.status, 204, "preflight: {}", pre.text());
    assert_eq!(
        pre.header("access-control-allow-origin").as_deref(),
        Some(app)
    );
    let methods = pre
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(methods.contains("POST"), "allow-methods {methods:?}");
    let allowed_headers = pre
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("content-type"),
        "allow-headers {allowed_headers:?}"
    );
    let pre = s
        .req("OPTIONS", &path)
        .header("Origin", app)
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await;
    assert_eq!(pre.status, 204, "preflight of the channel URL");

    for bad in [
        "https://app.example.com.evil",
        "http://app.example.com",
        "https://evil.example",
    ] {
        answer(sse_req(&s, &path).header("Origin", bad), bad)
            .await
            .assert_error(403, "origin_not_allowed");
        answer(
            s.req("OPTIONS", &format!("/connection/{sid}"))
                .header("Origin", bad)
                .header("Access-Control-Request-Method", "POST"),
            bad,
        )
        .await
        .assert_error(403, "origin_not_allowed");
    }
    // Refusals to an allowed origin carry CORS headers, so the page can read them.
    let resp = answer(
        s.get("/sub/not%20a%20channel").header("Origin", app),
        "a refusal to an allowed origin",
    )
    .await;
    resp.assert_error(400, "invalid_channel");
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some(app)
    );

    let id = s.publish_text(&ch, "cross-origin").await;
    sse_message(&mut sse, &id).await;
    assert_eq!(ws.next_json().await["id"], id.as_str());

    let any = Server::builder()
        .set("allowed_origins", r#"["*"]"#)
        .start()
        .await;
    let _w = any
        .ws_with(&path, &[("Origin", "https://whoever.example")])
        .await;
    let sse = any
        .sse(&path, &[("Origin", "https://whoever.example")])
        .await;
    assert_eq!(
        sse.http.header("access-control-allow-origin").as_deref(),
        Some("https://whoever.example")
    );
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn max_connections_refuses_with_503_while_others_receive() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_connections = 2\n")
        .start()
        .await;
    let ch = channel("maxc");
    let path = format!("/sub/{ch}");
    // Refused and finished requests give their slot back.
    for _ in 0..3 {
        let (status, _) = ws_refusal(
            s.try_ws(&path, &[("Authorization", "Bearer not-a-token")])
                .await,
            "bad token",
        );
        assert_eq!(status, 401);
        let resp = answer(s.get(&format!("{path}?timeout=0")), "short poll").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let mut a = s.ws(&path).await;
    let b = s.sse(&path, &[]).await;

    assert_ws_refused(
        s.try_ws(&path, &[]).await,
        503,
        "too_many_connections",
        "third WS",
    );
    answer(sse_req(&s, &path), "third SSE")
        .await
        .assert_error(503, "too_many_connections");
    answer(s.get(&format!("{path}?timeout=0")), "third long-poll")
        .await
        .assert_error(503, "too_many_connections");
    for via in [Via::Ws, Via::Sse] {
        let (status, body) = Session::refused(&s, via, "", &[]).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (503, &json!("too_many_connections")),
            "{via:?} {body}"
        );
    }
    // Backend calls are not connections.
    let id = s.publish_text(&ch, "full house").await;
    assert_eq!(a.next_json().await["id"], id.as_str());

    drop(b);
    let mut c = eventually(WAIT, "a freed slot admits a new connection", || async {
        s.try_ws(&path, &[]).await
    })
    .await;
    let id = s.publish_text(&ch, "again").await;
    assert_eq!(a.next_json().await["id"], id.as_str());
    assert_eq!(c.next_json().await["id"], id.as_str());
}

#[tokio::test]
async fn max_connections_per_ip_refuses_with_429_for_that_address_only() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_connections = 100\nmax_connections_per_ip = 2\n")
        .start()
        .await;
    let ch = channel("perip");
    let path = format!("/sub/{ch}");
    let mut a = s.ws(&path).await;
    let mut b = s.sse(&path, &[]).await;
    assert_ws_refused(
        s.try_ws(&path, &[]).await,
        429,
        "too_many_connections_from_ip",
        "third WS from 127.0.0.1",
    );
    answer(sse_req(&s, &path), "third SSE")
        .await
        .assert_error(429, "too_many_connections_from_ip");
    let (status, body) = Session::refused(&s, Via::Ws, "", &[]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("too_many_connections_from_ip")),
        "{body}"
    );

    let mut c = match ws_from(&s, "127.0.0.2", &path, &[]).await {
        Ok(ws) => ws,
        Err(e) => panic!("a connection from another address must be admitted: {e}"),
    };
    let id = s.publish_text(&ch, "per ip").await;
    assert_eq!(a.next_json().await["id"], id.as_str());
    sse_message(&mut b, &id).await;
    assert_eq!(c.next_json().await["id"], id.as_str());
}

#[tokio::test]
async fn max_subscriptions_per_session_is_limit_exceeded() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_subscriptions = 3\n")
        .start()
        .await;
    for via in [Via::Ws, Via::Sse] {
        let chans: Vec<String> = (0..4).map(|i| channel(&format!("ms{i}"))).collect();
        let (mut sess, _) = Session::connected(&s, via, None).await;
        for c in &chans[..3] {
            sess.ok("subscribe", json!({"channel": c})).await;
        }
        assert_eq!(
            sess.refused_code("subscribe", json!({"channel": chans[3]}))
                .await,
            "limit_exceeded",
            "{via:?}"
        );
        let id = s.publish_text(&chans[0], "still subscribed").await;
        sess.push_until("message on a kept subscription", |v| v["id"] == id.as_str())
            .await;
        sess.ok("unsubscribe", json!({"channel": chans[2]})).await;
        sess.ok("subscribe", json!({"channel": chans[3]})).await;
        let id = s.publish_text(&chans[3], "room again").await;
        sess.push_until("message on the fourth channel", |v| v["id"] == id.as_str())
            .await;
    }
}

#[tokio::test]
async fn client_publish_rate_limits_one_connection_only() {
    let s = Server::builder()
        .extra_config(&format!(
            "{CHAT_NS}\n[limits]\nclient_publish_rate = 1\nclient_publish_burst = 3\n"
        ))
        .start()
        .await;
    let ch = channel("chat:rate");
    let mut sub = s.ws(&format!("/sub/{ch}")).await;
    let (mut a, _) = Session::connected(&s, Via::Ws, None).await;
    let (mut b, _) = Session::connected(&s, Via::Sse, None).await;
    // Four publishes at once (pipelined): the burst of 3 passes, the 4th does not.
    for n in 1..=4 {
        a.send_raw(
            &json!({"id": 100 + n, "publish": {"channel": ch, "data": {"a": n}}}).to_string(),
        )
        .await;
    }
    for n in 1..=3 {
        let r = a.reply(100 + n).await;
        assert!(
            r.get("publish").is_some(),
            "publish {n} within the burst: {r}"
        );
    }
    let r = a.reply(104).await;
    assert_eq!(r["error"]["code"], "rate_limited", "{r}");
    b.ok("publish", json!({"channel": ch, "data": {"b": 1}}))
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sub.next_json().await["data"].clone());
    }
    assert_eq!(
        got,
        vec![
            json!({"a": 1}),
            json!({"a": 2}),
            json!({"a": 3}),
            json!({"b": 1})
        ]
    );
    // The limited session is still alive.
    a.ok("ping", json!({})).await;
}

#[tokio::test]
async fn oversized_command_closes_the_websocket_with_1009_and_is_413_over_http() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_command_size = 1024\n")
        .start()
        .await;
    let ch = channel("big");
    let (mut other, _) = Session::connected(&s, Via::Ws, None).await;
    other.ok("subscribe", json!({"channel": ch})).await;

    let big = json!({"id": 2, "subscribe": {"channel": ch}, "pad": "x".repeat(2000)}).to_string();
    let (mut ws_sess, _) = Session::connected(&s, Via::Ws, None).await;
    ws_sess.send_raw(&big).await;
    let end = within(WAIT, "close after an oversized frame", async {
        loop {
            match ws_sess.frame(WAIT).await {
                Frame::Json(v) if v.get("disconnect").is_some() => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        matches!(end, Frame::Closed(Some(1009))),
        "expected close 1009, got {end:?}"
    );

    let (mut http_sess, _) = Session::connected(&s, Via::Sse, None).await;
    let sid = http_sess.http_id().expect("id").to_string();
    let resp = s
        .post(&format!("/connection/{sid}"))
        .header("Content-Type", "application/json")
        .body(&big)
        .send()
        .await;
    assert_eq!(
        resp.status,
        413,
        "oversized POSTed command: {}",
        resp.text()
    );
    http_sess.ok("ping", json!({})).await;

    let id = s.publish_text(&ch, "others go on").await;
    other
        .push_until("message", |v| v["id"] == id.as_str())
        .await;
}

#[tokio::test]
async fn max_payload_is_enforced_on_every_way_in() {
    let s = Server::builder()
        .set("max_payload", "1000")
        .extra_config(CHAT_NS)
        .start()
        .await;
    let ch = channel("chat:payload");
    let mut sub = s.ws(&format!("/sub/{ch}")).await;

    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Content-Type", "text/plain")
        .body(vec![b'a'; 1001])
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channel": ch, "data": "b".repeat(1200)}).to_string())
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
    let resp = s
        .post("/api/users/someone/publish")
        .header("Content-Type", "application/json")
        .body(json!({"data": "c".repeat(1200)}).to_string())
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
    let (mut sess, _) = Session::connected(&s, Via::Ws, None).await;
    assert_eq!(
        sess.refused_code("publish", json!({"channel": ch, "data": "d".repeat(1200)}))
            .await,
        "payload_too_large"
    );

    let exact = s.publish(&ch, "text/plain", &[b'e'; 1000]).await;
    let small = sess
        .ok("publish", json!({"channel": ch, "data": "small"}))
        .await;
    assert_eq!(
        sub.next_json().await["id"],
        exact.as_str(),
        "only accepted payloads are delivered"
    );
    assert_eq!(sub.next_json().await["id"], small["id"]);
}

#[tokio::test]
async fn max_subscribers_refuses_with_429_channel_full() {
    let s = Server::builder()
        .extra_config("\n[[namespace]]\nprefix = \"full:\"\nmax_subscribers = 2\n")
        .start()
        .await;
    let ch = channel("full:c");
    let path = format!("/sub/{ch}");
    let a = s.ws(&path).await;
    let mut b = s.sse(&path, &[]).await;
    s.wait_subscribers(&ch, 2, WAIT).await;

    assert_ws_refused(s.try_ws(&path, &[]).await, 429, "channel_full", "third WS");
    answer(sse_req(&s, &path), "third SSE")
        .await
        .assert_error(429, "channel_full");
    answer(s.get(&format!("{path}?timeout=0")), "third long-poll")
        .await
        .assert_error(429, "channel_full");
    let (mut sess, _) = Session::connected(&s, Via::Ws, None).await;
    assert_eq!(
        sess.refused_code("subscribe", json!({"channel": ch})).await,
        "channel_full"
    );
    // The limit is per channel.
    let other = channel("full:d");
    sess.ok("subscribe", json!({"channel": other})).await;

    let id = s.publish_text(&ch, "full").await;
    sse_message(&mut b, &id).await;
    let mut a = a;
    assert_eq!(a.next_json().await["id"], id.as_str());

    a.close().await;
    s.wait_subscribers(&ch, 1, WAIT).await;
    sess.ok("subscribe", json!({"channel": ch})).await;
    let id = s.publish_text(&ch, "a seat freed").await;
    sess.push_until("message after a seat freed", |v| v["id"] == id.as_str())
        .await;
}

#[tokio::test]
async fn http_session_with_too_many_waiting_commands_is_429() {
    // The session task is held in a subscribe hook call to a backend that
    // never answers, so posted commands wait in its bounded queue.
    let backend = HookBackend::start(|_| HookAnswer::Silent).await;
    let s = Server::builder()
        .extra_config(&hooks(&backend.url, &["subscribe"], "deny", "1500ms"))
        .start()
        .await;
    let ch = channel("stuck");
    let mut sess = Session::open(&s, Via::Sse, "", &[]).await;
    let sid = sess.http_id().expect("id").to_string();
    sess.send_raw(&json!({"id": 1, "subscribe": {"channel": ch}}).to_string())
        .await;
    backend
        .wait_call("the subscribe hook call", |c| {
            c.body["channel"] == ch.as_str()
        })
        .await;

    let many: Vec<Value> = (100..300).map(|i| json!({"id": i, "ping": {}})).collect();
    let resp = s
        .post(&format!("/connection/{sid}"))
        .header("Content-Type", "application/json")
        .body(Value::Array(many).to_string())
        .send()
        .await;
    resp.assert_error(429, "limit_exceeded");

    // The session survives: the held command ends (backend down) and later ones work.
    let reply = within(WAIT, "the held subscribe's reply", async {
        loop {
            let v = sess.push().await;
            if v["id"] == 1 {
                return v;
            }
        }
    })
    .await;
    assert_eq!(reply["error"]["code"], "hook_unavailable", "{reply}");
    assert_eq!(sess.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn bad_security_settings_stop_the_start_with_exit_2() {
    let missing = std::env::temp_dir().join("herald-security-no-such-key.pem");
    let not_json =
        std::env::temp_dir().join(format!("herald-security-{}.jwks", std::process::id()));
    std::fs::write(&not_json, "not json").expect("write");
    let cases = [
        (
            "\n[auth]\nhmac_secret = \"too short\"\n".to_string(),
            "hmac_secret",
        ),
        (
            format!("\n[auth]\npublic_keys = [{}]\n", toml_path(&missing)),
            "herald-security-no-such-key.pem",
        ),
        (
            format!("\n[auth]\njwks_file = {}\n", toml_path(&not_json)),
            "jwks",
        ),
        (
            hooks("https://127.0.0.1:9/h", &["connect"], "deny", "1s"),
            "url",
        ),
        (
            hooks("http://127.0.0.1:9/h", &["connect"], "maybe", "1s"),
            "on_error",
        ),
        (
            hooks("http://127.0.0.1:9/h", &["conect"], "deny", "1s"),
            "events",
        ),
    ];
    for (config, needle) in cases {
        let mut p = Server::builder().extra_config(&config).spawn();
        let status = p.wait_exit(Duration::from_secs(10)).await;
        let err = p.stderr_text();
        assert_eq!(
            status.code(),
            Some(2),
            "config {config:?}: {status:?}, stderr {err}"
        );
        assert!(
            err.contains(needle),
            "config {config:?}: the message must name {needle:?}: {err}"
        );
    }
    let _ = std::fs::remove_file(&not_json);
}

// ---------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------

/// The request with `key` as its API key, or with none.
fn with_key<'a>(r: Req<'a>, key: Option<&str>) -> Req<'a> {
    match key {
        Some(k) => r.bearer(k),
        None => r.no_auth(),
    }
}

#[tokio::test]
async fn every_named_api_key_is_accepted_and_a_wrong_one_is_401() {
    let s = Server::builder()
        .api_key("k-main")
        .extra_config("\n[api_keys]\nbilling = \"k-billing\"\nreports = \"k-reports\"\n")
        .start()
        .await;
    let ch = channel("keys");
    let mut sub = s.ws(&format!("/sub/{ch}")).await; // clients need no key
    for key in ["k-main", "k-billing", "k-reports"] {
        let resp = s
            .post(&format!("/pub/{ch}"))
            .bearer(key)
            .header("Content-Type", "text/plain")
            .body(key)
            .send()
            .await;
        assert_eq!(resp.status, 201, "{key}: {}", resp.text());
        assert_eq!(sub.next_json().await["data"], key);
        let resp = s
            .get(&format!("/api/presence/{ch}"))
            .bearer(key)
            .send()
            .await;
        assert_eq!(resp.status, 200, "{key} on presence: {}", resp.text());
        let resp = s
            .post("/api/tokens")
            .bearer(key)
            .header("Content-Type", "application/json")
            .body(r#"{"user":"1"}"#)
            .send()
            .await;
        assert_eq!(resp.status, 201, "{key} on /api/tokens: {}", resp.text());
    }
    for bad in [
        Some("k-billin"),
        Some("k-billing2"),
        Some("K-MAIN"),
        Some(""),
        None,
    ] {
        let what = format!("API key {bad:?}");
        let requests = [
            s.post(&format!("/pub/{ch}"))
                .header("Content-Type", "text/plain")
                .body("x"),
            s.get(&format!("/pub/{ch}")),
            s.get(&format!("/api/presence/{ch}")),
            s.post("/api/publish")
                .header("Content-Type", "application/json")
                .body(json!({"channel": ch, "data": 1}).to_string()),
            s.post("/api/users/1/publish")
                .header("Content-Type", "application/json")
                .body(r#"{"data":1}"#),
            s.post("/api/users/1/disconnect"),
            s.post("/api/tokens").body("{}"),
        ];
        for r in requests {
            let resp = with_key(r, bad).send().await;
            assert_eq!(resp.status, 401, "{what}: {}", resp.text());
            resp.assert_error(401, "unauthorized");
        }
    }
    // Nothing from the refused publishes reached the subscriber.
    let id = s.publish_text(&ch, "last").await;
    assert_eq!(sub.next_json().await["id"], id.as_str());
}
