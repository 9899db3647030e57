//! Tokens: who a connection is and which private channels it may follow.
//!
//! Connection tokens are JWTs signed with HS256 (shared secret), RS256 or
//! ES256 (public keys from PEM files or a JWKS file). The algorithm a token
//! claims must match a configured key of that exact algorithm: `alg: none`,
//! an HMAC token checked against a public key (algorithm confusion) or any
//! other algorithm is refused before a signature is looked at.
//!
//! Herald also signs tokens itself (`POST /api/tokens`) and short-lived,
//! single-use tickets for URLs (`?ticket=`), with its own HS256 secret (the
//! configured `hmac_secret`, or a random one per process).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use herald_core::engine::now_ms;
use herald_core::Refusal;

/// The claims Herald reads.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Claims {
    /// The user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Channels granted: exact names, `prefix*` patterns, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Shown to others in presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Set on tickets only: the single-use id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Set on tickets only: when the token the ticket stands for expires. A
    /// connection opened by ticket lives as long as that token, not as
    /// long as the (short) ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exp: Option<u64>,
}

/// A channel grant from a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Exact(String),
    Prefix(String),
}

impl Grant {
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_string()),
            None => Self::Exact(text.to_string()),
        }
    }

    pub fn allows(&self, channel: &str) -> bool {
        match self {
            Self::Exact(name) => name == channel,
            Self::Prefix(prefix) => channel.starts_with(prefix.as_str()),
        }
    }
}

/// Who a connection is. The default is anonymous.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user: Option<Arc<str>>,
    pub grants: Arc<[Grant]>,
    pub info: Option<Arc<serde_json::Value>>,
    /// When the token expires, in ms since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    /// Whether a token (or ticket) was presented and verified; a token that
    /// names no user and grants nothing is still not anonymous.
    pub authenticated: bool,
}

impl Identity {
    fn from_claims(claims: Claims) -> Self {
        let exp = claims.token_exp.unwrap_or(claims.exp);
        Self {
            user: claims.sub.map(Arc::from),
            // An empty list shares one static allocation (`Arc::default`).
            grants: if claims.channels.is_empty() {
                Arc::default()
            } else {
                claims.channels.iter().map(|c| Grant::parse(c)).collect()
            },
            info: claims.info.map(Arc::new),
            expires_at_ms: Some(exp.saturating_mul(1000)),
            authenticated: true,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        !self.authenticated
    }

    pub fn granted(&self, channel: &str) -> bool {
        self.grants.iter().any(|g| g.allows(channel))
    }

    /// The claims to sign for a ticket standing for this identity.
    fn ticket_claims(&self, ticket: String, exp: u64) -> Claims {
        Claims {
            sub: self.user.as_deref().map(str::to_string),
            exp,
            nbf: None,
            iat: Some(now_ms() / 1000),
            channels: self
                .grants
                .iter()
                .map(|g| match g {
                    Grant::Exact(n) => n.clone(),
                    Grant::Prefix(p) => format!("{p}*"),
                })
                .collect(),
            info: self.info.as_deref().cloned(),
            ticket: Some(ticket),
            token_exp: self.expires_at_ms.map(|ms| ms / 1000),
        }
    }
}

/// Why a token was refused. Each is a distinct error code for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm {0} is not accepted (configured: {1})")]
    Algorithm(String, String),
    #[error("token signature is not valid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token claims are not valid: {0}")]
    Claims(String),
    #[error("a ticket cannot be used as a token, nor a token as a ticket")]
    WrongKind,
    #[error("ticket was already used")]
    TicketUsed,
}

impl TokenError {
    /// The refusal (stable error code) sent to clients.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Expired => Refusal::TokenExpired,
            Self::TicketUsed => Refusal::TicketUsed,
            _ => Refusal::InvalidToken,
        }
    }
}

/// A key that verifies one algorithm.
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Why the token settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds neither an RSA nor an EC (P-256) public key in PEM form")]
    Pem { path: String },
    #[error("{path} is not a JWKS document: {message}")]
    Jwks { path: String, message: String },
    #[error("hmac_secret must be at least 32 bytes")]
    ShortSecret,
}

/// Token settings (from `[auth]`).
#[derive(Debug, Clone, Default)]
pub struct TokenSettings {
    pub hmac_secret: Option<String>,
    pub public_keys: Vec<std::path::PathBuf>,
    pub jwks_file: Option<std::path::PathBuf>,
    pub leeway: Duration,
    pub ticket_ttl: Duration,
}

/// Verifies tokens and tickets, and signs Herald's own.
pub struct Tokens {
    keys: Vec<VerifyKey>,
    /// Herald's own HS256 key: signs `/api/tokens` answers and tickets.
    signer: EncodingKey,
    signer_check: DecodingKey,
    leeway: u64,
    ticket_ttl: Duration,
}

impl Tokens {
    pub fn new(settings: &TokenSettings) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        let own_secret = match &settings.hmac_secret {
            Some(secret) => {
                if secret.len() < 32 {
                    return Err(KeyError::ShortSecret);
                }
                keys.push(VerifyKey {
                    kid: None,
                    alg: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                });
                secret.as_bytes().to_vec()
            }
            None => {
                let mut random = [0u8; 32];
                let _ = getrandom::fill(&mut random);
                random.to_vec()
            }
        };
        for path in &settings.public_keys {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: shown.clone(),
                source,
            })?;
            let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, key)
            } else {
                return Err(KeyError::Pem { path: shown });
            };
            keys.push(VerifyKey {
                kid: None,
                alg: key.0,
                key: key.1,
            });
        }
        if let Some(path) = &settings.jwks_file {
            let shown = path.display().to_string();
            let text = std::fs::read(path).map_err(|source| KeyError::Read {
                path: shown.clone(),
                source,
            })?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| KeyError::Jwks {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Jwks {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => {
                        return Err(KeyError::Jwks {
                            path: shown,
                            message: "only RSA and P-256 EC keys are supported".into(),
                        })
                    }
                };
                keys.push(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
        }
        if settings.hmac_secret.is_none() {
            // Tokens Herald signs itself verify with its own key.
            keys.push(VerifyKey {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(&own_secret),
            });
        }
        Ok(Self {
            keys,
            signer: EncodingKey::from_secret(&own_secret),
            signer_check: DecodingKey::from_secret(&own_secret),
            leeway: settings.leeway.as_secs(),
            ticket_ttl: settings.ticket_ttl,
        })
    }

    fn accepted(&self) -> String {
        let mut names: Vec<String> = self.keys.iter().map(|k| format!("{:?}", k.alg)).collect();
        names.sort();
        names.dedup();
        names.join(", ")
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp"]);
        v
    }

    fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::Algorithm(
                format!("{:?}", header.alg),
                self.accepted(),
            ));
        }
        let mut last = TokenError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.alg)) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = map_error(&e),
            }
            if last != TokenError::Signature {
                // The signature was right; the claims are what is wrong.
                break;
            }
        }
        Err(last)
    }

    /// Checks a connection token.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let claims = self.decode(token)?;
        if claims.ticket.is_some() {
            return Err(TokenError::WrongKind);
        }
        Ok(Identity::from_claims(claims))
    }

    /// Checks a ticket's signature and expiry; the caller makes it single-use
    /// with the returned ticket id.
    pub fn verify_ticket(&self, ticket: &str) -> Result<(Identity, String), TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(
            ticket,
            &self.signer_check,
            &self.validation(Algorithm::HS256),
        )
        .map_err(|e| map_error(&e))?
        .claims;
        let id = claims.ticket.clone().ok_or(TokenError::WrongKind)?;
        Ok((Identity::from_claims(claims), id))
    }

    /// Signs a token for `user` (the `/api/tokens` endpoint).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.signer)
            .unwrap_or_default()
    }

    /// A single-use ticket for this identity, valid for the ticket TTL (or
    /// until the token expires, if sooner).
    pub fn ticket(&self, identity: &Identity) -> (String, u64) {
        let ttl = self.ticket_ttl.as_secs().max(1);
        let mut exp = now_ms() / 1000 + ttl;
        if let Some(token_exp) = identity.expires_at_ms {
            exp = exp.min(token_exp / 1000);
        }
        let claims = identity.ticket_claims(super::random_id(), exp);
        (self.sign(&claims), exp)
    }

    pub fn ticket_ttl(&self) -> Duration {
        self.ticket_ttl
    }

    /// The clock skew tolerated on token times (also when a live
    /// connection's token runs out).
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway)
    }
}

fn map_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::Algorithm("?".into(), "configured keys only".into())
        }
        ErrorKind::MissingRequiredClaim(c) => TokenError::Claims(format!("missing {c}")),
        ErrorKind::Json(_) => TokenError::Claims("claims have the wrong shape".into()),
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn claims(exp_offset: i64) -> Claims {
        Claims {
            sub: Some("42".into()),
            exp: ((now_ms() / 1000) as i64 + exp_offset) as u64,
            channels: vec!["secret".into(), "team:*".into()],
            ..Claims::default()
        }
    }

    fn hs(claims: &Claims, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn valid_token_grants() {
        let id = tokens().verify(&hs(&claims(60), SECRET)).expect("valid");
        assert_eq!(id.user.as_deref(), Some("42"));
        assert!(id.granted("secret") && id.granted("team:a") && !id.granted("other"));
    }

    #[test]
    fn refusals() {
        let t = tokens();
        assert_eq!(
            t.verify(&hs(&claims(-60), SECRET)).err(),
            Some(TokenError::Expired)
        );
        assert_eq!(
            t.verify(&hs(&claims(60), "another-secret-another-secret-xx"))
                .err(),
            Some(TokenError::Signature)
        );
        let mut early = claims(600);
        early.nbf = Some(now_ms() / 1000 + 300);
        assert_eq!(
            t.verify(&hs(&early, SECRET)).err(),
            Some(TokenError::NotYetValid)
        );
        // alg none: header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(t.verify(none).is_err());
        assert!(t.verify("garbage").is_err());
    }

    #[test]
    fn tickets_are_not_tokens() {
        let t = tokens();
        let id = t.verify(&hs(&claims(60), SECRET)).expect("valid");
        let (ticket, _) = t.ticket(&id);
        let (again, ticket_id) = t.verify_ticket(&ticket).expect("ticket");
        assert_eq!(again.user.as_deref(), Some("42"));
        assert!(!ticket_id.is_empty());
        assert_eq!(t.verify(&ticket).err(), Some(TokenError::WrongKind));
        assert!(t.verify_ticket(&hs(&claims(60), SECRET)).is_err());
    }
}
