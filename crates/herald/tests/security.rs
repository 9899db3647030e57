//! The security model (docs/security.md), driven against the real binary:
//! who may connect, subscribe and call the backend endpoints, on every
//! transport a rule touches: tokens, `/api/tokens`, tickets, token expiry
//! and refresh, private channels, origins and API keys. Each refusal is
//! checked where users see it (HTTP status and error code before a
//! WebSocket upgrade, the session protocol's error reply, close codes).
//! Personal channels and offline queues are in `users.rs`, presence in
//! `presence.rs`, hooks and RPC in `hooks.rs`, connection and rate limits in
//! `connection_limits.rs`; the helpers in `support_security`.

mod common;
mod support_security;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use support_security::*;

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
