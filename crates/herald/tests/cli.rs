//! The binary's other commands: `--version`, `gen-config`, `check-config`
//! and `token`, run as a user would, and a minted token used on a real
//! server.

mod common;
mod support_security;

use std::path::Path;
use std::time::Duration;

use std::process::Command;

use common::*;
use serde_json::json;

fn herald(args: &[&str]) -> (i32, String, String) {
    herald_with(args, &[])
}

/// Runs herald with `env` and none of the test run's own HERALD_ variables.
fn herald_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(|v| v.starts_with("HERALD_")) {
            cmd.env_remove(var);
        }
    }
    let out = cmd.envs(env.iter().copied()).output().expect("run herald");
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

#[test]
fn check_config_shows_latest_on_subscribe_per_namespace() {
    let path = temp_file(
        "latest.toml",
        "[[namespace]]\nprefix = \"price:\"\nlatest_on_subscribe = true\n\
         [[namespace]]\nprefix = \"news:\"\n",
    );
    let (code, summary, err) = herald(&["check-config", path_str(&path)]);
    assert_eq!(code, 0, "{err}");
    let section = |prefix: &str| {
        summary
            .split("[[namespace]]")
            .find(|s| s.contains(&format!("prefix = \"{prefix}\"")))
            .unwrap_or_else(|| panic!("no {prefix} namespace in\n{summary}"))
            .to_string()
    };
    assert!(
        section("price:").contains("latest_on_subscribe = true\n"),
        "{summary}"
    );
    assert!(
        section("news:").contains("latest_on_subscribe = false\n"),
        "{summary}"
    );
    let bad = temp_file(
        "latest-bad.toml",
        "[[namespace]]\nprefix = \"a:\"\nlatest_on_subscribe = \"yes\"\n",
    );
    let (code, _, err) = herald(&["check-config", path_str(&bad)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 3") && err.contains("boolean"), "{err}");
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

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn the_environment_wins_over_the_file_and_check_config_shows_it() {
    let file = temp_file(
        "env.toml",
        "heartbeat = \"5s\"\nallowed_origins = [\"https://file.example\"]\n\
         [history]\nsize = 7\n[limits]\nmax_connections_per_ip = 9\n",
    );
    let (code, summary, err) = herald_with(
        &["check-config", path_str(&file)],
        &[
            ("HERALD_HEARTBEAT", "20s"),
            ("HERALD_HISTORY__SIZE", "50"),
            ("HERALD_LIMITS__MAX_CONNECTIONS_PER_IP", "100"),
            (
                "HERALD_ALLOWED_ORIGINS",
                "https://a.example, http://localhost:3000",
            ),
            ("HERALD_API_KEY", "12345"),
            // Not config keys: the harnesses' own, tolerated.
            ("HERALD_BIN", "/somewhere/herald"),
            ("HERALD_TEST_ENGINE", "redis://127.0.0.1:1/0"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "heartbeat = \"20s\"",
        "\n[history]\nsize = 50\n",
        "max_connections_per_ip = 100\n",
        "allowed_origins = [\"https://a.example\", \"http://localhost:3000\"]",
        "api_keys = [\"default = <redacted>\"]",
    ] {
        assert!(summary.contains(line), "{line:?} not in\n{summary}");
    }
    assert!(!summary.contains("12345"), "the key was printed");
}

#[test]
fn unknown_and_bad_environment_values_exit_2_naming_the_variable() {
    for (var, value, named) in [
        ("HERALD_HISTORY__SIZEE", "5", "history.sizee"),
        ("HERALD_NAMESPACE__PREFIX", "chat:", "namespace"),
        ("HERALD_HISTORY__SIZE", "many", "whole number"),
        ("HERALD_HEARTBEAT", "soon", "duration"),
        ("HERALD_LISTEN", "nowhere", "listen"),
        ("HERALD_TRUSTED_PROXIES", "10.0.0.0/8,everyone", "everyone"),
    ] {
        for args in [
            &["check-config"][..],
            &["serve", "--log-format", "text"][..],
        ] {
            let (code, _, err) = herald_with(args, &[(var, value)]);
            assert_eq!(code, 2, "{args:?} {var}={value}: {err}");
            assert!(
                err.contains(&format!("{var}: ")) && err.contains(named),
                "{args:?} {var}={value}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn flags_win_over_the_environment() {
    // An unusable HERALD_LISTEN under the harness's --listen, and a key in
    // the environment under --api-key.
    let s = Server::builder()
        .api_key("flag-key")
        .env("HERALD_LISTEN", "192.0.2.1:1")
        .env("HERALD_API_KEY", "env-key")
        .env("HERALD_HISTORY__SIZE", "2")
        .start()
        .await;
    let ch = channel("flags");
    let resp = s
        .post(&format!("/pub/{ch}"))
        .bearer("env-key")
        .body("x")
        .send()
        .await;
    resp.assert_error(401, "unauthorized");
    // The environment's history size wins over the file's 100.
    s.publish_many(&ch, "m", 3).await;
    assert_eq!(s.info(&ch).await["messages"], 2);
}

/// A server started with a backend listener: a publish there answers 201
/// and reaches a subscriber of the public listener, which itself refuses
/// the publish (served on the API listener).
async fn assert_the_backend_listener_publishes(s: &Server, what: &str) {
    let api = s.process.wait_api_listening();
    assert_ne!(api, s.addr, "{what}: one listener for both");
    let ch = channel("api-listen");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    let resp = request_at(
        api,
        "POST",
        &format!("/pub/{ch}"),
        &[],
        b"on the backend",
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: publish on the API listener: {e}"));
    assert_eq!(resp.status, 201, "{what}: {}", resp.text());
    let id = resp.json()["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(ws.next_json().await["id"], id.as_str(), "{what}");
    s.post(&format!("/pub/{ch}"))
        .body("on the public side")
        .send()
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn the_api_listen_flag_starts_the_backend_listener() {
    let s = Server::builder()
        .arg("--api-listen")
        .arg("127.0.0.1:0")
        .start()
        .await;
    assert_the_backend_listener_publishes(&s, "--api-listen").await;
}

#[tokio::test]
async fn herald_api_listen_starts_the_backend_listener() {
    let s = Server::builder()
        .env("HERALD_API_LISTEN", "127.0.0.1:0")
        .start()
        .await;
    assert_the_backend_listener_publishes(&s, "HERALD_API_LISTEN").await;
}

#[tokio::test]
async fn herald_trusted_proxies_makes_the_forwarded_address_count() {
    let s = Server::builder()
        .env("HERALD_TRUSTED_PROXIES", "127.0.0.1/32")
        .extra_config("\n[limits]\nmax_connections_per_ip = 1\n")
        .start()
        .await;
    let path = format!("/sub/{}", channel("trusted-env"));
    let a = [("X-Forwarded-For", "198.51.100.1")];
    let b = [("X-Forwarded-For", "198.51.100.2")];
    // Two clients behind the proxy (both loopback peers): each has its own
    // per-IP count, so the second is admitted and a second from .1 is not.
    let _first = s.ws_with(&path, &a).await;
    let _second = s.ws_with(&path, &b).await;
    support_security::assert_ws_refused(
        s.try_ws(&path, &a).await,
        429,
        "too_many_connections_from_ip",
        "a second connection from 198.51.100.1",
    );
}

#[tokio::test]
async fn the_api_key_can_be_read_from_a_file() {
    let key_file = temp_file("api-key", "key-from-a-file\n");
    let mut s = Server::builder()
        .env("HERALD_API_KEY_FILE", path_str(&key_file))
        .start()
        .await;
    let ch = channel("keyfile");
    let resp = s.post(&format!("/pub/{ch}")).body("x").send().await;
    resp.assert_error(401, "unauthorized");
    s.key = Some("key-from-a-file".into());
    s.publish_text(&ch, "x").await;
    // In the file too; and both forms at once are refused.
    let mut s = Server::builder()
        .set("api_key_file", &format!("{:?}", path_str(&key_file)))
        .start()
        .await;
    s.key = Some("key-from-a-file".into());
    s.publish_text(&ch, "y").await;
    let both = temp_file(
        "both.toml",
        &format!(
            "api_key = \"k\"\napi_key_file = {:?}\n",
            path_str(&key_file)
        ),
    );
    let (code, _, err) = herald(&["check-config", path_str(&both)]);
    assert_eq!(code, 2);
    assert!(err.contains("api_key and api_key_file"), "{err}");
    let (code, _, err) = herald_with(
        &["check-config"],
        &[("HERALD_API_KEY_FILE", "/nonexistent/herald-key")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("api_key_file") && err.contains("/nonexistent/herald-key"),
        "{err}"
    );
}

#[tokio::test]
async fn the_hmac_secret_can_be_read_from_a_file() {
    let secret = temp_file("hmac", &format!("{}\n", support_security::SECRET));
    let secret_path = path_str(&secret);
    let (code, token, err) = herald_with(
        &["token", "--user", "ann", "--channel", "priv:*"],
        &[("HERALD_AUTH__HMAC_SECRET_FILE", secret_path)],
    );
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let s = Server::builder()
        .extra_config(&format!(
            "\n[auth]\nhmac_secret_file = {secret_path:?}\n\n[[namespace]]\nprefix = \"priv:\"\nprivate = true\n"
        ))
        .start()
        .await;
    let ch = channel("priv:file");
    let mut ws = s
        .ws_with(
            &format!("/sub/{ch}"),
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
    let id = s.publish_json(&ch, &json!({"n": 1}).to_string()).await;
    assert_eq!(ws.next_json().await["id"], id.as_str());
}

#[test]
fn check_config_shows_secret_files_by_path_not_content() {
    let key = temp_file("key", "the-key-itself\n");
    let secret = temp_file("secret", &format!("{}\n", support_security::SECRET));
    let (code, summary, err) = herald_with(
        &["check-config"],
        &[
            ("HERALD_API_KEY_FILE", path_str(&key)),
            ("HERALD_AUTH__HMAC_SECRET_FILE", path_str(&secret)),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        summary.contains(&format!("api_key_file = {:?}", path_str(&key))),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("hmac_secret_file = {:?}", path_str(&secret))),
        "{summary}"
    );
    assert!(!summary.contains("the-key-itself"), "{summary}");
    assert!(!summary.contains(support_security::SECRET), "{summary}");
    let (_, generated, _) = herald(&["gen-config"]);
    assert!(generated.contains("# api_key_file = "), "{generated}");
    assert!(generated.contains("# hmac_secret_file = "), "{generated}");
}

#[test]
fn check_config_shows_webhooks_with_the_secret_redacted() {
    let secret = temp_file("webhook-secret", "webhook-secret-itself\n");
    let (code, summary, err) = herald_with(
        &["check-config"],
        &[
            ("HERALD_WEBHOOKS__URL", "http://127.0.0.1:9000/events"),
            ("HERALD_WEBHOOKS__SECRET_FILE", path_str(&secret)),
            ("HERALD_WEBHOOKS__EVENTS", "user.online,user.offline"),
            ("HERALD_PRESENCE_GRACE", "2s"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "presence_grace = \"2s\"",
        "[webhooks]",
        "url = \"http://127.0.0.1:9000/events\"",
        "secret = \"<redacted>\"",
        "events = [\"user.offline\", \"user.online\"]",
        "max_attempts = 8",
        "batch_size = 100",
    ] {
        assert!(summary.contains(line), "{line} in:\n{summary}");
    }
    assert!(!summary.contains("webhook-secret-itself"), "{summary}");
    // A url without a secret names what is missing.
    let (code, _, err) = herald_with(
        &["check-config"],
        &[("HERALD_WEBHOOKS__URL", "http://127.0.0.1:9000/events")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("webhooks.secret"), "{err}");
}
