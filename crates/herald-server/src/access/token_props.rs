//! Property tests of token and ticket checks: arbitrary text (and text
//! shaped like a JWT) never panics and is refused; a token Herald signs
//! verifies back to its claims; any single-byte change to a signed token
//! or ticket is refused.
//!
//! `PROPTEST_CASES=100000 cargo test -p herald-server --lib token_props`
//! for a longer run.

use std::time::Duration;

use base64::Engine as _;
use herald_core::engine::now_ms;
use proptest::prelude::*;
use serde_json::Value;

use crate::access::token::{Claims, Grant, Identity, TokenSettings, Tokens};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn tokens() -> Tokens {
    Tokens::new(&TokenSettings {
        hmac_secret: Some(SECRET.into()),
        leeway: Duration::from_secs(0),
        ticket_ttl: Duration::from_secs(30),
        ..TokenSettings::default()
    })
    .expect("valid settings")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Text shaped like a JWT: three dot-separated base64url segments, the
/// header JSON with an arbitrary or a dangerous algorithm.
fn jwt_like() -> impl Strategy<Value = String> {
    let alg = prop_oneof![
        Just("none".to_owned()),
        Just("HS256".to_owned()),
        Just("RS256".to_owned()),
        Just("ES256".to_owned()),
        Just("HS512".to_owned()),
        any::<String>(),
    ];
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..60),
        (any::<u64>(), any::<String>()).prop_map(|(exp, sub)| {
            serde_json::json!({ "exp": exp, "sub": sub })
                .to_string()
                .into_bytes()
        }),
    ];
    (alg, payload, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(alg, payload, sig)| {
        let header = serde_json::json!({ "alg": alg, "typ": "JWT" }).to_string();
        format!("{}.{}.{}", b64(header.as_bytes()), b64(&payload), b64(&sig))
    })
}

fn claims() -> impl Strategy<Value = Claims> {
    let now = now_ms() / 1000;
    (
        proptest::option::of(any::<String>()),
        60u64..1_000_000,
        proptest::collection::vec(any::<String>(), 0..4),
        proptest::option::of((any::<String>(), any::<i64>())),
    )
        .prop_map(move |(sub, ttl, channels, info)| Claims {
            sub,
            exp: now + ttl,
            iat: Some(now),
            channels,
            info: info.map(|(s, n)| serde_json::json!({ "s": s, "n": n })),
            ..Claims::default()
        })
}

/// The identity a token with these claims stands for.
fn check_identity(id: &Identity, claims: &Claims) -> Result<(), TestCaseError> {
    prop_assert!(id.authenticated);
    prop_assert_eq!(id.user.as_deref(), claims.sub.as_deref());
    let grants: Vec<Grant> = claims.channels.iter().map(|c| Grant::parse(c)).collect();
    prop_assert_eq!(&id.grants[..], &grants[..]);
    prop_assert_eq!(id.info.as_deref(), claims.info.as_ref());
    prop_assert_eq!(id.expires_at_ms, Some(claims.exp * 1000));
    Ok(())
}

/// `token` with the byte at `at` replaced by another printable ASCII byte.
fn changed(token: &str, at: prop::sample::Index, by: u8) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = at.index(bytes.len());
    let mut new = b' ' + by % 95;
    if new == bytes[i] {
        new = if new == b'~' { b' ' } else { new + 1 };
    }
    bytes[i] = new;
    String::from_utf8(bytes).expect("ASCII")
}

proptest! {
    #[test]
    fn arbitrary_text_is_refused_as_token_and_ticket(
        text in prop_oneof![any::<String>(), "[A-Za-z0-9_.-]{0,120}", jwt_like()],
    ) {
        let t = tokens();
        prop_assert!(t.verify(&text).is_err());
        prop_assert!(t.verify_ticket(&text).is_err());
    }

    #[test]
    fn signed_tokens_verify_to_their_claims(claims in claims()) {
        let t = tokens();
        let token = t.sign(&claims);
        let id = t.verify(&token).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_identity(&id, &claims)?;
        // A ticket for that identity stands for the same claims.
        let (ticket, _) = t.ticket(&id);
        let (again, ticket_id) = t.verify_ticket(&ticket).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!ticket_id.is_empty());
        check_identity(&again, &claims)?;
        // And neither passes for the other.
        prop_assert!(t.verify(&ticket).is_err());
        prop_assert!(t.verify_ticket(&token).is_err());
    }

    #[test]
    fn a_single_byte_change_is_refused(
        claims in claims(),
        at in any::<prop::sample::Index>(),
        by in any::<u8>(),
    ) {
        let t = tokens();
        let token = t.sign(&claims);
        let forged = changed(&token, at, by);
        prop_assert!(t.verify(&forged).is_err(), "{token} -> {forged} accepted");
        let id = t.verify(&token).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (ticket, _) = t.ticket(&id);
        let forged = changed(&ticket, at, by);
        prop_assert!(t.verify_ticket(&forged).is_err(), "{ticket} -> {forged} accepted");
    }

    #[test]
    fn claims_of_the_wrong_shape_are_refused(extra in any::<String>(), exp in prop_oneof![
        Just(Value::Null), any::<String>().prop_map(Value::from), (-1000i64..0).prop_map(Value::from),
    ]) {
        // Correctly signed, but `exp` missing, not a number, or in the past.
        let t = tokens();
        let body = serde_json::json!({ "sub": extra, "exp": exp });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &body,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        prop_assert!(t.verify(&token).is_err());
    }
}
