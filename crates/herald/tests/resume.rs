//! Resume points and gaps on every transport: `?since=`, `?last_event_id=`
//! and the `Last-Event-ID` header; `since=earliest`; live-only without a
//! resume point; gap reports for trimmed, unknown and pre-restart ids; bad
//! ids refused.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Ws,
    Sse,
    Ndjson,
    LongPoll,
    Jsonp,
    Iframe,
}

const ALL_TRANSPORTS: [Transport; 6] = [
    Transport::Ws,
    Transport::Sse,
    Transport::Ndjson,
    Transport::LongPoll,
    Transport::Jsonp,
    Transport::Iframe,
];

const STREAMING: [Transport; 4] = [
    Transport::Ws,
    Transport::Sse,
    Transport::Ndjson,
    Transport::Iframe,
];

/// How the resume point is given.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Since,
    LastEventIdQuery,
    LastEventIdHeader,
}

const ALL_FORMS: [Form; 3] = [Form::Since, Form::LastEventIdQuery, Form::LastEventIdHeader];

/// An open subscription (streaming) or a finished poll answer.
enum Sub {
    Ws(Ws),
    Sse(Sse),
    Ndjson(Ndjson),
    Iframe(Iframe),
    Answer(Value),
}

/// What one item of a subscription was: the gap notice or a text message.
#[derive(Debug, PartialEq)]
enum Got {
    Gap,
    Msg { id: String, text: String },
}

fn query_and_headers(resume: Option<(Form, &str)>) -> (String, Vec<(String, String)>) {
    match resume {
        None => (String::new(), vec![]),
        Some((Form::Since, id)) => (format!("since={id}"), vec![]),
        Some((Form::LastEventIdQuery, id)) => (format!("last_event_id={id}"), vec![]),
        Some((Form::LastEventIdHeader, id)) => (
            String::new(),
            vec![("Last-Event-ID".to_string(), id.to_string())],
        ),
    }
}

fn join_query(parts: &[&str]) -> String {
    let parts: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

async fn open(s: &Server, ch: &str, t: Transport, resume: Option<(Form, &str)>) -> Sub {
    let (q, headers) = query_and_headers(resume);
    let hdrs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match t {
        Transport::Ws => Sub::Ws(
            s.ws_with(&format!("/sub/{ch}{}", join_query(&[&q])), &hdrs)
                .await,
        ),
        Transport::Sse => Sub::Sse(
            s.sse(&format!("/sub/{ch}{}", join_query(&[&q])), &hdrs)
                .await,
        ),
        Transport::Ndjson => {
            let mut r = s
                .get(&format!("/sub/{ch}{}", join_query(&[&q])))
                .header("Accept", "application/x-ndjson");
            for (k, v) in &hdrs {
                r = r.header(k, v);
            }
            let http = r.stream().await;
            assert_eq!(http.status, 200, "NDJSON subscribe status");
            Sub::Ndjson(Ndjson::new(http))
        }
        Transport::Iframe => {
            let mut r = s.get(&format!(
                "/sub/{ch}{}",
                join_query(&[&q, "transport=iframe", "callback=cb"])
            ));
            for (k, v) in &hdrs {
                r = r.header(k, v);
            }
            let http = r.stream().await;
            assert_eq!(http.status, 200, "iframe subscribe status");
            Sub::Iframe(Iframe::new(http, "cb"))
        }
        Transport::LongPoll | Transport::Jsonp => {
            let extra = if t == Transport::Jsonp {
                "callback=cb"
            } else {
                ""
            };
            let mut r = s.get(&format!(
                "/sub/{ch}{}",
                join_query(&[&q, "timeout=0", extra])
            ));
            for (k, v) in &hdrs {
                r = r.header(k, v);
            }
            let resp = r.send().await;
            assert_eq!(resp.status, 200, "poll answer: {}", resp.text());
            let v = if t == Transport::Jsonp {
                jsonp_arg(&resp.text(), "cb")
            } else {
                resp.json()
            };
            assert_eq!(v["channel"], ch, "poll answer {v}");
            Sub::Answer(v)
        }
    }
}

fn got_from_envelope(v: &Value, ch: &str) -> Got {
    if v.get("gap").is_some() {
        assert_gap_marker(v, ch);
        return Got::Gap;
    }
    let id = envelope_id(v, ch);
    let text = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("text payload expected: {v}"))
        .to_string();
    Got::Msg { id, text }
}

/// Reads `n` items from a streaming subscription.
async fn read_items(sub: &mut Sub, ch: &str, n: usize) -> Vec<Got> {
    let mut out = Vec::new();
    while out.len() < n {
        let got = match sub {
            Sub::Ws(ws) => got_from_envelope(&ws.next_json().await, ch),
            Sub::Ndjson(nd) => got_from_envelope(&nd.next_json().await, ch),
            Sub::Iframe(ifr) => got_from_envelope(&ifr.next_call().await, ch),
            Sub::Sse(sse) => {
                let e = sse.next_event().await;
                if e.event == "gap" {
                    let v: Value = serde_json::from_str(&e.data)
                        .unwrap_or_else(|err| panic!("gap event data not JSON ({err}): {e:?}"));
                    assert_eq!(v["channel"], ch, "gap event data {v}");
                    Got::Gap
                } else {
                    assert_eq!(e.event, "message", "SSE event {e:?}");
                    Got::Msg {
                        id: e
                            .id
                            .clone()
                            .unwrap_or_else(|| panic!("SSE event without id: {e:?}")),
                        text: e.data.clone(),
                    }
                }
            }
            Sub::Answer(_) => panic!("read_items on a poll answer"),
        };
        out.push(got);
    }
    out
}

/// The items of a poll answer, with its gap flag first when set.
fn answer_items(v: &Value, ch: &str) -> Vec<Got> {
    let mut out = Vec::new();
    match v["gap"].as_bool() {
        Some(true) => out.push(Got::Gap),
        Some(false) => {}
        None => panic!("poll answer without a boolean gap: {v}"),
    }
    for m in v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {v}"))
    {
        out.push(got_from_envelope(m, ch));
    }
    out
}

fn expected(gap: bool, ids: &[String], texts: &[String]) -> Vec<Got> {
    let mut out = Vec::new();
    if gap {
        out.push(Got::Gap);
    }
    for (id, text) in ids.iter().zip(texts) {
        out.push(Got::Msg {
            id: id.clone(),
            text: text.clone(),
        });
    }
    out
}

/// Subscribes with `resume` and checks the subscription delivers exactly
/// `want` (gap notice first when `gap`) and then, on streaming transports,
/// exactly one newly published message and nothing twice.
async fn check_resume(
    s: &Server,
    ch: &str,
    t: Transport,
    resume: Option<(Form, &str)>,
    want: Vec<Got>,
) {
    let mut sub = open(s, ch, t, resume).await;
    match &sub {
        Sub::Answer(v) => {
            assert_eq!(
                answer_items(v, ch),
                want,
                "{t:?} {resume:?}: poll answer {v}"
            );
            if !want.contains(&Got::Gap) {
                let last = want.iter().rev().find_map(|g| match g {
                    Got::Msg { id, .. } => Some(id.clone()),
                    Got::Gap => None,
                });
                if let Some(last) = last {
                    assert_eq!(v["last_id"], last.as_str(), "{t:?}: last_id in {v}");
                }
            }
        }
        _ => {
            let got = read_items(&mut sub, ch, want.len()).await;
            assert_eq!(got, want, "{t:?} {resume:?}: resumed items");
            let live = s.publish_text(ch, "live").await;
            let next = read_items(&mut sub, ch, 1).await;
            assert_eq!(
                next,
                vec![Got::Msg {
                    id: live,
                    text: "live".into()
                }],
                "{t:?} {resume:?}: the first item after the resumed ones must be the new message"
            );
        }
    }
}

/// Runs `case` for every combination, collecting failures so one report
/// names every transport/form that is wrong.
async fn for_each<F, Fut>(s: Arc<Server>, combos: Vec<(Transport, Option<Form>)>, case: F)
where
    F: Fn(Arc<Server>, Transport, Option<Form>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut failures = Vec::new();
    for (t, f) in combos {
        let r = tokio::spawn(case(s.clone(), t, f)).await;
        if let Err(e) = r {
            let msg = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_else(|| "task failed".into());
            failures.push(format!("{t:?}/{f:?}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failing combinations:\n{}",
        failures.join("\n")
    );
}

fn texts(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn resume_from_retained_id_on_every_transport_and_form() {
    let s = Arc::new(Server::start().await);
    let mut combos = Vec::new();
    for t in ALL_TRANSPORTS {
        for f in ALL_FORMS {
            combos.push((t, Some(f)));
        }
    }
    for_each(s, combos, |s, t, f| async move {
        let ch = channel("resume");
        let ids = s.publish_many(&ch, "m", 5).await;
        let want = expected(false, &ids[2..], &texts("m", 3..=5));
        check_resume(&s, &ch, t, Some((f.expect("form"), &ids[1])), want).await;
    })
    .await;
}

#[tokio::test]
async fn resume_from_newest_id_delivers_only_later_messages() {
    let s = Arc::new(Server::start().await);
    let combos = ALL_TRANSPORTS
        .iter()
        .map(|t| (*t, Some(Form::Since)))
        .collect();
    for_each(s, combos, |s, t, _| async move {
        let ch = channel("newest");
        let ids = s.publish_many(&ch, "m", 3).await;
        check_resume(&s, &ch, t, Some((Form::Since, &ids[2])), vec![]).await;
    })
    .await;
}

#[tokio::test]
async fn since_earliest_on_every_transport() {
    let s = Arc::new(Server::start().await);
    let combos = ALL_TRANSPORTS.iter().map(|t| (*t, None)).collect();
    for_each(s, combos, |s, t, _| async move {
        let ch = channel("earliest");
        let ids = s.publish_many(&ch, "e", 3).await;
        let want = expected(false, &ids, &texts("e", 1..=3));
        check_resume(&s, &ch, t, Some((Form::Since, "earliest")), want).await;
    })
    .await;
}

#[tokio::test]
async fn no_resume_point_means_only_new_messages() {
    let s = Arc::new(Server::start().await);
    let combos = STREAMING.iter().map(|t| (*t, None)).collect();
    for_each(s, combos, |s, t, _| async move {
        let ch = channel("live");
        s.publish_many(&ch, "old", 2).await;
        let mut sub = open(&s, &ch, t, None).await;
        s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
        let id = s.publish_text(&ch, "new").await;
        let got = read_items(&mut sub, &ch, 1).await;
        assert_eq!(
            got,
            vec![Got::Msg {
                id,
                text: "new".into()
            }],
            "{t:?}: without a resume point only new messages"
        );
    })
    .await;
}

#[tokio::test]
async fn gap_when_resuming_from_a_trimmed_id() {
    let s = Arc::new(Server::start().await);
    let combos = ALL_TRANSPORTS
        .iter()
        .map(|t| (*t, Some(Form::Since)))
        .collect();
    for_each(s, combos, |s, t, _| async move {
        // history_size = 3 for the short: namespace.
        let ch = channel("short:gap");
        let ids = s.publish_many(&ch, "g", 6).await;
        let want = expected(true, &ids[3..], &texts("g", 4..=6));
        check_resume(&s, &ch, t, Some((Form::Since, &ids[0])), want).await;
    })
    .await;
}

#[tokio::test]
async fn gap_when_resuming_from_an_unknown_id() {
    let s = Arc::new(Server::start().await);
    let combos = ALL_TRANSPORTS
        .iter()
        .map(|t| (*t, Some(Form::LastEventIdQuery)))
        .collect();
    for_each(s, combos, |s, t, _| async move {
        // An id this channel never had: one from another channel, made first.
        let other = channel("other");
        let foreign = s.publish_text(&other, "elsewhere").await;
        // Ids are per channel `ms-seq` (Redis streams): two channels
        // publishing in the same millisecond both get `ms-0`. Publish this
        // channel's messages in a later millisecond so the foreign id is
        // one this channel never had.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let ch = channel("unknown");
        let ids = s.publish_many(&ch, "u", 3).await;
        assert!(!ids.contains(&foreign));
        let want = expected(true, &ids, &texts("u", 1..=3));
        check_resume(&s, &ch, t, Some((Form::LastEventIdQuery, &foreign)), want).await;
    })
    .await;
}

#[tokio::test]
async fn resume_across_a_restart() {
    let ch = channel("restart");
    let old_id = {
        let s = Server::start().await;
        let ids = s.publish_many(&ch, "before", 2).await;
        ids[0].clone()
    };
    let s = Server::start().await;
    let new_id = s.publish_text(&ch, "after").await;
    let v = s.poll(&format!("/sub/{ch}?since={old_id}&timeout=0")).await;
    let msgs = v["messages"].as_array().expect("messages");
    if test_engine().is_none() {
        // Memory engine: history died with the process; the old id is a gap.
        assert_eq!(
            v["gap"], true,
            "memory engine, id from before a restart: {v}"
        );
        assert_eq!(msgs.len(), 1, "{v}");
        assert_text_envelope(&msgs[0], &ch, &new_id, "after");
        let mut ws = s.ws(&format!("/sub/{ch}?since={old_id}")).await;
        assert_gap_marker(&ws.next_json().await, &ch);
        assert_text_envelope(&ws.next_json().await, &ch, &new_id, "after");
    } else {
        // A persistent engine kept the history: no gap.
        assert_eq!(v["gap"], false, "persistent engine across a restart: {v}");
        assert_eq!(msgs.len(), 2, "{v}");
        assert_text_envelope(&msgs[1], &ch, &new_id, "after");
    }
}

#[tokio::test]
async fn many_messages_resume_in_order() {
    let s = Server::start().await;
    let ch = channel("order");
    let ids = s.publish_many(&ch, "n", 60).await;
    let v = s.poll(&format!("/sub/{ch}?since=earliest&timeout=0")).await;
    let got: Vec<String> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| envelope_id(m, &ch))
        .collect();
    assert_eq!(got, ids, "long-poll order");
    let mut ws = s.ws(&format!("/sub/{ch}?since=earliest")).await;
    for id in &ids {
        assert_eq!(envelope_id(&ws.next_json().await, &ch), *id, "WS order");
    }
    let sse_from = &ids[29];
    let mut sse = s
        .sse(&format!("/sub/{ch}"), &[("Last-Event-ID", sse_from)])
        .await;
    for (i, id) in ids[30..].iter().enumerate() {
        assert_sse_message(&sse.next_event().await, id, &format!("n{}", i + 31));
    }
}

#[tokio::test]
async fn bad_resume_ids_are_400_invalid_since_on_every_transport() {
    let s = Server::start().await;
    let ch = channel("badsince");
    s.publish_text(&ch, "x").await;
    let hundred = format!("{}-{}", "1".repeat(50), "1".repeat(49));
    assert_eq!(hundred.len(), 100);
    let mut failures = Vec::new();
    for bad in ["abc", "1-2-3", hundred.as_str(), "-1", "1-"] {
        for form in ALL_FORMS {
            let (q, headers) = query_and_headers(Some((form, bad)));
            let hdrs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let variants: [(&str, &str, &str); 5] = [
                ("long-poll", "timeout=0", ""),
                ("jsonp", "timeout=0&callback=cb", ""),
                ("iframe", "transport=iframe&callback=cb", ""),
                ("sse", "", "text/event-stream"),
                ("ndjson", "", "application/x-ndjson"),
            ];
            for (name, extra, accept) in variants {
                let mut r = s.get(&format!("/sub/{ch}{}", join_query(&[&q, extra])));
                if !accept.is_empty() {
                    r = r.header("Accept", accept);
                }
                for (k, v) in &hdrs {
                    r = r.header(k, v);
                }
                let resp = r.send().await;
                let code = serde_json::from_slice::<Value>(&resp.body)
                    .ok()
                    .map(|v| v["error"]["code"].clone());
                if resp.status != 400 || code != Some(Value::from("invalid_since")) {
                    failures.push(format!(
                        "{name} {form:?} {bad:?}: {} {}",
                        resp.status,
                        resp.text().chars().take(120).collect::<String>()
                    ));
                }
            }
            match s
                .try_ws(&format!("/sub/{ch}{}", join_query(&[&q])), &hdrs)
                .await
            {
                Ok(_) => failures.push(format!("ws {form:?} {bad:?}: upgrade accepted")),
                Err(e) if e.starts_with("HTTP 400") && e.contains("invalid_since") => {}
                Err(e) => failures.push(format!("ws {form:?} {bad:?}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "bad ids not refused with 400 invalid_since:\n{}",
        failures.join("\n")
    );
}
