//! The streaming HTTP transports (SSE, NDJSON, forever-iframe) share one
//! driver; each only says how to frame things.
//!
//! The body starts with bytes at once (so a client can tell a live stream
//! from one a proxy buffers), sends a heartbeat every interval, and ends with
//! a final frame saying why (shutdown, slow consumer, channel deleted).
//! Ready items are batched into one write.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use herald_core::disconnect::{Disconnect, SHUTDOWN};
use herald_core::presence::Notice;
use herald_core::{ChannelName, Item, Message};
use tokio::time::{Interval, MissedTickBehavior};

use crate::state::AppState;
use crate::subscribe::{no_buffering, Connection};

/// Most items gathered into one write.
const BATCH: usize = 64;

/// How one streaming transport writes each kind of thing.
pub trait Framing: Send + 'static {
    fn content_type(&self) -> &'static str;
    fn open(&self, out: &mut VecDeque<Bytes>);
    fn message(&self, message: &Message, out: &mut VecDeque<Bytes>);
    fn gap(&self, channel: &ChannelName, out: &mut VecDeque<Bytes>);
    fn heartbeat(&self, channel: &ChannelName, out: &mut VecDeque<Bytes>);
    fn close(&self, channel: &ChannelName, why: Disconnect, out: &mut VecDeque<Bytes>);
    /// A join/leave notice (JSON object) on the channel.
    fn notice(&self, notice: &Notice, out: &mut VecDeque<Bytes>);
}

struct Driver<F> {
    conn: Connection,
    channel: ChannelName,
    framing: F,
    heartbeat: Interval,
    /// Created once per stream, not on every wake-up.
    shutdown: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    out: VecDeque<Bytes>,
    done: bool,
}

impl<F: Framing> Driver<F> {
    /// Frames one item; returns false when the stream must end after it.
    fn frame(&mut self, item: Item) -> bool {
        match item {
            Item::Message(m) => {
                self.framing.message(&m, &mut self.out);
                true
            }
            Item::Gap(channel) => {
                self.framing.gap(&channel, &mut self.out);
                true
            }
            Item::Closed(channel, why) => {
                self.framing.close(&channel, why, &mut self.out);
                false
            }
            Item::Disconnect(why) => {
                self.framing.close(&self.channel, why, &mut self.out);
                false
            }
            Item::Notice(notice) => {
                self.framing.notice(&notice, &mut self.out);
                true
            }
        }
    }

    async fn fill(&mut self) {
        tokio::select! {
            biased;
            () = self.shutdown.as_mut() => {
                self.framing.close(&self.channel, SHUTDOWN, &mut self.out);
                self.done = true;
            }
            item = self.conn.sub.next() => {
                let mut more = self.frame(item);
                let mut taken = 1;
                while more && taken < BATCH {
                    let Some(item) = self.conn.sub.try_next() else { break };
                    more = self.frame(item);
                    taken += 1;
                }
                self.done = !more;
            }
            _ = self.heartbeat.tick() => {
                self.framing.heartbeat(&self.channel, &mut self.out);
            }
        }
    }
}

/// Answers with the stream for a subscribed connection.
pub fn serve<F: Framing>(state: &AppState, conn: Connection, framing: F) -> Response {
    let mut out = VecDeque::new();
    framing.open(&mut out);
    let content_type = framing.content_type();
    let driver = Driver {
        channel: conn.channel.clone(),
        conn,
        framing,
        heartbeat: heartbeat_interval(state.config.heartbeat),
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        out,
        done: false,
    };
    let stream = futures_util::stream::unfold(driver, |mut d| async move {
        while d.out.is_empty() {
            if d.done {
                return None;
            }
            d.fill().await;
        }
        let chunk = d.out.pop_front()?;
        Some((Ok::<_, std::convert::Infallible>(chunk), d))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_buffering(&mut response);
    response
}

/// An interval whose first tick is one period from now.
pub fn heartbeat_interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}
