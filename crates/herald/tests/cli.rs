//! The binary's other commands: `--version`, `gen-config`, `check-config`
//! and `token`, run as a user would, and a minted token used on a real
//! server.

mod common;
mod support_security;

use std::process::Command;

use common::*;
use serde_json::json;

fn herald(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("run herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}", channel("herald-cli")));
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn version_is_printed() {
    let (code, out, _) = herald(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("herald "), "{out}");
}

#[test]
fn a_generated_config_checks_and_its_secrets_are_not_printed() {
    let (code, generated, _) = herald(&["gen-config"]);
    assert_eq!(code, 0);
    let key = generated
        .lines()
        .find_map(|l| l.strip_prefix("api_key = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("an api_key line")
        .to_string();
    assert!(key.len() >= 32, "{key}");
    // Two runs, two secrets.
    let (_, again, _) = herald(&["gen-config"]);
    assert_ne!(again, generated);
    let path = temp_file("gen.toml", &generated);
    let (code, summary, err) = herald(&["check-config", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{err}");
    assert!(summary.contains("listen = \"127.0.0.1:7070\""), "{summary}");
    assert!(summary.contains("<redacted>"), "{summary}");
    assert!(!summary.contains(&key), "check-config printed the API key");
}

#[test]
fn bad_configs_exit_2_naming_what_is_wrong() {
    for (text, named) in [
        ("listen = \"127.0.0.1:7070\"\nheartbeat = \n", "line 2"),
        ("allowed_origins = [\"not a url\"]\n", "not a url"),
        ("listn = \"127.0.0.1:1\"\n", "listn"),
        ("trusted_proxies = [\"everyone\"]\n", "trusted_proxies"),
    ] {
        let path = temp_file("bad.toml", text);
        let (code, _, err) = herald(&["check-config", path.to_str().expect("utf-8 path")]);
        assert_eq!(code, 2, "{text:?}: {err}");
        assert!(err.contains(named), "{text:?}: {err}");
    }
}

#[tokio::test]
async fn a_minted_token_opens_a_private_channel() {
    let secret = support_security::SECRET;
    let auth = format!("\n[auth]\nhmac_secret = \"{secret}\"\n");
    let path = temp_file("token.toml", &auth);
    let (code, token, err) = herald(&[
        "token",
        "--user",
        "ann",
        "--channel",
        "priv:*",
        "--ttl",
        "10m",
        "--config",
        path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let s = Server::builder()
        .extra_config(&format!(
            "{auth}\n[[namespace]]\nprefix = \"priv:\"\nprivate = true\n"
        ))
        .start()
        .await;
    let ch = channel("priv:cli");
    let mut ws = s
        .ws_with(
            &format!("/sub/{ch}"),
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
    let id = s.publish_json(&ch, &json!({"n": 1}).to_string()).await;
    assert_eq!(ws.next_json().await["id"], id.as_str());
    // Without a configured secret there is nothing to sign with.
    let empty = temp_file("empty.toml", "");
    let (code, _, err) = herald(&[
        "token",
        "--user",
        "ann",
        "--config",
        empty.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("hmac_secret"), "{err}");
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_and_a_bad_filter_is_refused() {
    let s = Server::builder()
        .env("HERALD_LOG_FORMAT", "json")
        .start()
        .await;
    s.publish_text(&channel("logs"), "x").await;
    let text = eventually(IO_TIMEOUT, "a log line", || async {
        let t = s.process.stderr_text();
        if t.lines().any(|l| !l.trim().is_empty()) {
            Ok(t)
        } else {
            Err("no log line yet".to_string())
        }
    })
    .await;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "{field} missing in {line}");
        }
        assert!(
            !line.contains('\u{1b}'),
            "ANSI colour in a log that is not a terminal"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_LOG", "herald=[")
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("run herald");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HERALD_LOG"));
}
