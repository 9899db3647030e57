//! `latest_on_subscribe`: a subscriber without a resume point first gets
//! the channel's newest retained message, marked (`"latest": true`; on SSE
//! an `event: latest` before the message event), then the live ones,
//! unmarked and without a duplicate; a resume gets no mark; a namespace
//! without the option, an empty channel and a message aged out of history
//! give nothing first and no gap. On every transport of the channel URL and
//! on the session protocol over WebSocket, SSE and long-poll; run with the
//! memory engine and, with `HERALD_TEST_ENGINE`, Redis.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `latest:` channels have the option; `latest:brief:` ones too, with a
/// history that forgets after a second. Everything else is without it.
const NAMESPACES: &str = "\n[[namespace]]\nprefix = \"latest:\"\nlatest_on_subscribe = true\n\
     \n[[namespace]]\nprefix = \"latest:brief:\"\nhistory_ttl = \"1s\"\nlatest_on_subscribe = true\n";

async fn server() -> Server {
    Server::builder().extra_config(NAMESPACES).start().await
}

/// What one item of a subscription was.
#[derive(Debug, PartialEq)]
enum Got {
    Gap,
    Msg {
        id: String,
        text: String,
        latest: bool,
    },
}

fn msg(id: &str, text: &str, latest: bool) -> Got {
    Got::Msg {
        id: id.to_string(),
        text: text.to_string(),
        latest,
    }
}

/// An envelope (or gap notice) of a JSON encoding as a [`Got`]; the mark
/// must be exactly `"latest": true` when present.
fn got_from_json(v: &Value, ch: &str) -> Got {
    if v.get("gap").is_some() {
        assert_gap_marker(v, ch);
        return Got::Gap;
    }
    let id = envelope_id(v, ch);
    let latest = match v.get("latest") {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(other) => panic!("the mark must be \"latest\": true, got {other} in {v}"),
    };
    let text = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("text payload expected: {v}"))
        .to_string();
    Got::Msg { id, text, latest }
}

// ---- the channel URL ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Ws,
    Sse,
    Ndjson,
    Iframe,
    LongPoll,
    Jsonp,
}

const ALL: [Transport; 6] = [
    Transport::Ws,
    Transport::Sse,
    Transport::Ndjson,
    Transport::Iframe,
    Transport::LongPoll,
    Transport::Jsonp,
];

/// Where a subscription starts.
#[derive(Clone, Debug)]
enum Start {
    Live,
    /// `?since=` (an id or `earliest`).
    Since(String),
    /// The `Last-Event-ID` header, as a reconnecting `EventSource` sends.
    LastEventId(String),
}

/// An open streaming subscription, or a poll answer.
enum Sub {
    Ws(Ws),
    Sse(Sse),
    Ndjson(Ndjson),
    Iframe(Iframe),
    Answer(Value),
}

async fn open(s: &Server, ch: &str, t: Transport, from: &Start) -> Sub {
    let mut query: Vec<String> = Vec::new();
    let mut headers: Vec<(&str, &str)> = Vec::new();
    match from {
        Start::Live => {}
        Start::Since(id) => query.push(format!("since={id}")),
        Start::LastEventId(id) => headers.push(("Last-Event-ID", id.as_str())),
    }
    match t {
        Transport::Iframe => query.extend(["transport=iframe".into(), "callback=cb".into()]),
        Transport::LongPoll => query.push("timeout=0".into()),
        Transport::Jsonp => query.extend(["timeout=0".into(), "callback=cb".into()]),
        _ => {}
    }
    let path = if query.is_empty() {
        format!("/sub/{ch}")
    } else {
        format!("/sub/{ch}?{}", query.join("&"))
    };
    let request = |accept: Option<&str>| {
        let mut r = s.get(&path);
        if let Some(accept) = accept {
            r = r.header("Accept", accept);
        }
        for (k, v) in &headers {
            r = r.header(k, v);
        }
        r
    };
    match t {
        Transport::Ws => Sub::Ws(s.ws_with(&path, &headers).await),
        Transport::Sse => Sub::Sse(s.sse(&path, &headers).await),
        Transport::Ndjson => {
            let http = request(Some("application/x-ndjson")).stream().await;
            assert_eq!(http.status, 200, "NDJSON {path}");
            Sub::Ndjson(Ndjson::new(http))
        }
        Transport::Iframe => {
            let http = request(None).stream().await;
            assert_eq!(http.status, 200, "iframe {path}");
            Sub::Iframe(Iframe::new(http, "cb"))
        }
        Transport::LongPoll | Transport::Jsonp => {
            let resp = request(None).send().await;
            assert_eq!(resp.status, 200, "poll {path}: {}", resp.text());
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

/// The next `n` items of a streaming subscription. On SSE the mark is an
/// `event: latest` naming the id of the message event that must follow it.
async fn items(sub: &mut Sub, ch: &str, n: usize) -> Vec<Got> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(match sub {
            Sub::Ws(ws) => got_from_json(&ws.next_json().await, ch),
            Sub::Ndjson(nd) => got_from_json(&nd.next_json().await, ch),
            Sub::Iframe(ifr) => got_from_json(&ifr.next_call().await, ch),
            Sub::Sse(sse) => {
                let e = sse.next_event().await;
                match e.event.as_str() {
                    "gap" => Got::Gap,
                    "latest" => {
                        let mark: Value = serde_json::from_str(&e.data)
                            .unwrap_or_else(|err| panic!("latest data not JSON ({err}): {e:?}"));
                        assert_eq!(mark["channel"], ch, "latest event {e:?}");
                        assert!(e.id.is_none(), "the mark moves no resume point: {e:?}");
                        let m = sse.next_event().await;
                        assert_eq!(m.event, "message", "after the mark, the message: {m:?}");
                        assert_eq!(m.id.as_deref(), mark["id"].as_str(), "the mark names it");
                        msg(m.id.as_deref().unwrap_or_default(), &m.data, true)
                    }
                    "message" => msg(
                        e.id.as_deref()
                            .unwrap_or_else(|| panic!("SSE message without id: {e:?}")),
                        &e.data,
                        false,
                    ),
                    other => panic!("unexpected SSE event {other}: {e:?}"),
                }
            }
            Sub::Answer(_) => panic!("items of a poll answer: use answer_items"),
        });
    }
    out
}

/// A poll answer's items (the gap flag first when set) and its `last_id`.
fn answer_items(v: &Value, ch: &str) -> (Vec<Got>, Option<String>) {
    let mut out = Vec::new();
    if v["gap"] == true {
        out.push(Got::Gap);
    }
    for m in v["messages"].as_array().expect("messages") {
        out.push(got_from_json(m, ch));
    }
    (out, v["last_id"].as_str().map(str::to_string))
}

/// Opens a subscription from `from`, checks it opens with exactly `first`,
/// then that the next message published is the next item, unmarked:
/// nothing twice, nothing else between. On the polls that second half is
/// the next poll, from the first answer's `last_id`. Returns the id of the
/// message it published.
async fn check(s: &Server, ch: &str, t: Transport, from: Start, first: Vec<Got>) -> String {
    let what = format!("{t:?} from {from:?}");
    let mut sub = open(s, ch, t, &from).await;
    if let Sub::Answer(v) = &sub {
        let (got, last_id) = answer_items(v, ch);
        assert_eq!(got, first, "{what}: the answer {v}");
        let live = s.publish_text(ch, "live").await;
        let again = Start::Since(last_id.unwrap_or_else(|| "earliest".into()));
        let Sub::Answer(v) = open(s, ch, t, &again).await else {
            unreachable!("a poll answers")
        };
        let (got, last_id) = answer_items(&v, ch);
        assert_eq!(
            got,
            vec![msg(&live, "live", false)],
            "{what}: the next poll {v}"
        );
        assert_eq!(last_id.as_deref(), Some(live.as_str()), "{what}: {v}");
        return live;
    }
    let got = items(&mut sub, ch, first.len()).await;
    assert_eq!(got, first, "{what}: what it opened with");
    let live = s.publish_text(ch, "live").await;
    assert_eq!(
        items(&mut sub, ch, 1).await,
        vec![msg(&live, "live", false)],
        "{what}: the first item after is the live message, unmarked"
    );
    live
}

/// Runs `case` once per transport (one after the other) and reports every
/// one that failed.
async fn each_transport<F, Fut>(case: F)
where
    F: Fn(Transport) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut failures = Vec::new();
    for t in ALL {
        if let Err(e) = tokio::spawn(case(t)).await {
            failures.push(format!("{t:?}: {}", panic_text(e)));
        }
    }
    assert!(
        failures.is_empty(),
        "failing transports:\n{}",
        failures.join("\n")
    );
}

fn panic_text(e: tokio::task::JoinError) -> String {
    e.try_into_panic()
        .ok()
        .and_then(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        })
        .unwrap_or_else(|| "task failed".into())
}

#[tokio::test]
async fn a_channel_url_opens_with_the_latest_message_then_live_ones_and_a_resume_without_it() {
    let s = Arc::new(server().await);
    each_transport(|t| {
        let s = s.clone();
        async move {
            let ch = channel("latest:price");
            let p = s.publish_many(&ch, "p", 3).await;
            // No resume point: exactly the newest one, marked; then live.
            let l1 = check(&s, &ch, t, Start::Live, vec![msg(&p[2], "p3", true)]).await;
            // Back from the latest id (as an EventSource reconnects):
            // nothing lost, no mark.
            let l2 = check(
                &s,
                &ch,
                t,
                Start::LastEventId(p[2].clone()),
                vec![msg(&l1, "live", false)],
            )
            .await;
            // Any other resume is answered as ever, unmarked.
            let l3 = check(
                &s,
                &ch,
                t,
                Start::Since(p[0].clone()),
                vec![
                    msg(&p[1], "p2", false),
                    msg(&p[2], "p3", false),
                    msg(&l1, "live", false),
                    msg(&l2, "live", false),
                ],
            )
            .await;
            let mut all: Vec<Got> = (0..3)
                .map(|i| msg(&p[i], &format!("p{}", i + 1), false))
                .collect();
            all.extend([l1, l2, l3].iter().map(|id| msg(id, "live", false)));
            check(&s, &ch, t, Start::Since("earliest".into()), all).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_channel_url_opens_with_nothing_without_the_option_or_a_retained_message() {
    let s = Arc::new(server().await);
    // Channels whose only message ages out (a second), all waited for once.
    let mut brief = Vec::new();
    for _ in ALL {
        let ch = channel("latest:brief:status");
        s.publish_text(&ch, "soon gone").await;
        brief.push(ch);
    }
    for ch in &brief {
        aged_out(&s, ch).await;
    }
    let brief = Arc::new(brief);
    each_transport(|t| {
        let s = s.clone();
        let brief = brief.clone();
        async move {
            let plain = channel("plain");
            s.publish_many(&plain, "o", 2).await;
            check(&s, &plain, t, Start::Live, vec![]).await;
            let empty = channel("latest:empty");
            check(&s, &empty, t, Start::Live, vec![]).await;
            let i = ALL.iter().position(|x| *x == t).expect("a transport");
            check(&s, &brief[i], t, Start::Live, vec![]).await;
        }
    })
    .await;
}

/// Waits until history keeps nothing of `ch`.
async fn aged_out(s: &Server, ch: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("{ch} to age out"),
        || async {
            let v = s
                .get(&format!("/api/history/{ch}?since=earliest"))
                .send()
                .await
                .json();
            if v["messages"].as_array().is_some_and(Vec::is_empty) {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
}

// ---- the session protocol ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    WebSocket,
    Sse,
    LongPoll,
}

const VIAS: [Via; 3] = [Via::WebSocket, Via::Sse, Via::LongPoll];

enum Link {
    Ws(Ws),
    Sse(Sse),
    LongPoll(VecDeque<Value>),
}

/// A session-protocol client: commands up, frames down (pings skipped).
struct Session<'a> {
    s: &'a Server,
    link: Link,
    /// The secret id of an HTTP session.
    id: String,
    next_command: u64,
}

impl<'a> Session<'a> {
    async fn open(s: &'a Server, via: Via) -> Session<'a> {
        let (link, id) = match via {
            Via::WebSocket => (Link::Ws(s.ws("/connection/websocket").await), String::new()),
            Via::Sse => {
                let mut sse = s.sse("/connection/sse", &[]).await;
                let first: Value =
                    serde_json::from_str(&sse.next_event().await.data).expect("JSON");
                (Link::Sse(sse), session_id(&first))
            }
            Via::LongPoll => {
                let resp = s.post("/connection/longpoll").send().await;
                assert_eq!(
                    resp.status,
                    201,
                    "POST /connection/longpoll: {}",
                    resp.text()
                );
                (Link::LongPoll(VecDeque::new()), session_id(&resp.json()))
            }
        };
        Session {
            s,
            link,
            id,
            next_command: 1,
        }
    }

    async fn send(&mut self, command: Value) {
        match &mut self.link {
            Link::Ws(ws) => ws.send_text(&command.to_string()).await,
            _ => {
                let resp = self
                    .s
                    .post(&format!("/connection/{}", self.id))
                    .header("Content-Type", "application/json")
                    .body(command.to_string())
                    .send()
                    .await;
                assert_eq!(resp.status, 202, "POST a command: {}", resp.text());
            }
        }
    }

    /// The next frame but pings.
    async fn frame(&mut self) -> Value {
        loop {
            let v = match &mut self.link {
                Link::Ws(ws) => ws.next_json().await,
                Link::Sse(sse) => serde_json::from_str(&sse.next_event().await.data)
                    .expect("a session frame is JSON"),
                Link::LongPoll(frames) => match frames.pop_front() {
                    Some(v) => v,
                    None => {
                        let path = format!("/connection/longpoll/{}?timeout=5", self.id);
                        let answer = self.s.poll(&path).await;
                        frames.extend(answer["frames"].as_array().expect("frames").clone());
                        continue;
                    }
                },
            };
            if v.get("ping").is_none() {
                return v;
            }
        }
    }

    /// Subscribes; the reply must be the next frame. Returns its body.
    async fn subscribe(&mut self, ch: &str, since: Option<&str>) -> Value {
        let id = self.next_command;
        self.next_command += 1;
        let mut body = json!({ "channel": ch });
        if let Some(since) = since {
            body["since"] = json!(since);
        }
        self.send(json!({"id": id, "subscribe": body})).await;
        let reply = self.frame().await;
        assert_eq!(reply["id"], id, "the reply comes before any push: {reply}");
        assert!(reply.get("error").is_none(), "subscribe refused: {reply}");
        reply["subscribe"].clone()
    }

    async fn pushes(&mut self, ch: &str, n: usize) -> Vec<Got> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(got_from_json(&self.frame().await, ch));
        }
        out
    }
}

fn session_id(frame: &Value) -> String {
    frame["session"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no session id in {frame}"))
        .to_string()
}

/// A new session subscribes to `ch` from `since`: the reply says
/// `position`, the pushes open with exactly `first`, and the next message
/// published is the next push, unmarked. Returns that message's id.
async fn check_session(
    s: &Server,
    via: Via,
    ch: &str,
    since: Option<&str>,
    position: Option<&str>,
    first: Vec<Got>,
) -> String {
    let what = format!("{via:?} since {since:?}");
    let mut session = Session::open(s, via).await;
    let reply = session.subscribe(ch, since).await;
    assert_eq!(reply["position"].as_str(), position, "{what}: {reply}");
    assert_eq!(reply["gap"], false, "{what}: {reply}");
    assert_eq!(
        session.pushes(ch, first.len()).await,
        first,
        "{what}: opened with"
    );
    let live = s.publish_text(ch, "live").await;
    assert_eq!(
        session.pushes(ch, 1).await,
        vec![msg(&live, "live", false)],
        "{what}: then the live message, unmarked"
    );
    live
}

#[tokio::test]
async fn a_session_subscribe_opens_with_the_latest_message_on_every_session_transport() {
    let s = Arc::new(server().await);
    let mut brief = Vec::new();
    for _ in VIAS {
        let ch = channel("latest:brief:status");
        s.publish_text(&ch, "soon gone").await;
        brief.push(ch);
    }
    for ch in &brief {
        aged_out(&s, ch).await;
    }
    let mut failures = Vec::new();
    for (via, brief) in VIAS.into_iter().zip(brief) {
        let s = s.clone();
        let case = async move {
            let s = &*s;
            let ch = channel("latest:score");
            let p = s.publish_many(&ch, "p", 3).await;
            // No `since`: the newest one, marked, at the reply's position.
            let latest = vec![msg(&p[2], "p3", true)];
            let l1 = check_session(s, via, &ch, None, Some(&p[2]), latest).await;
            // Back from the latest id: nothing lost, no mark.
            let back = vec![msg(&l1, "live", false)];
            let l2 = check_session(s, via, &ch, Some(&p[2]), Some(&l1), back).await;
            // Any other resume as ever.
            let resumed = vec![
                msg(&p[2], "p3", false),
                msg(&l1, "live", false),
                msg(&l2, "live", false),
            ];
            check_session(s, via, &ch, Some(&p[1]), Some(&l2), resumed).await;
            // Without the option, and on an empty channel: nothing first.
            let plain = channel("plain");
            let old = s.publish_text(&plain, "old").await;
            check_session(s, via, &plain, None, Some(&old), vec![]).await;
            let empty = channel("latest:empty");
            check_session(s, via, &empty, None, None, vec![]).await;
            // Aged out of history: nothing first (whatever position the
            // engine still knows), no gap.
            let mut session = Session::open(s, via).await;
            let reply = session.subscribe(&brief, None).await;
            assert_eq!(reply["gap"], false, "{via:?}: {reply}");
            let live = s.publish_text(&brief, "live").await;
            assert_eq!(
                session.pushes(&brief, 1).await,
                vec![msg(&live, "live", false)],
                "{via:?}: an aged-out latest"
            );
        };
        if let Err(e) = tokio::spawn(case).await {
            failures.push(format!("{via:?}: {}", panic_text(e)));
        }
    }
    assert!(failures.is_empty(), "failing:\n{}", failures.join("\n"));
}
