//! The streaming HTTP transports (SSE, NDJSON, forever-frame) in both
//! dialects: the response body is the [`Downstream`] loop itself, encoded
//! by the format's [`Encoder`]; no task and no queue of its own.
//!
//! The body starts with bytes at once, sends a heartbeat every interval,
//! and ends with a last frame saying why (shutdown, slow consumer, channel
//! deleted). Ready items are batched into one write. When the client goes
//! away, the body and with it the session are dropped.

use std::collections::VecDeque;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use super::downstream::{ends, Downstream, Step};
use super::Encoder;
use crate::protocol::Push;

struct Writer<E> {
    down: Downstream,
    encoder: E,
    pushes: Vec<Push>,
    out: VecDeque<Bytes>,
    done: bool,
}

impl<E: Encoder> Writer<E> {
    async fn fill(&mut self) {
        match self.down.step(&mut self.pushes).await {
            Step::Pushed => {
                self.done = ends(&self.pushes);
                for push in self.pushes.drain(..) {
                    self.encoder.push(&push, &mut self.out);
                }
            }
            Step::Heartbeat => self.encoder.heartbeat(&mut self.out),
            Step::Ended => self.done = true,
        }
    }
}

/// The streaming response: the encoder's opening bytes, `first` (the
/// session's opening frame), then what the downstream pushes.
pub(crate) fn serve<E: Encoder>(down: Downstream, encoder: E, first: Option<Push>) -> Response {
    let mut out = VecDeque::new();
    encoder.open(&mut out);
    if let Some(first) = first {
        encoder.push(&first, &mut out);
    }
    let content_type = encoder.content_type();
    let writer = Writer {
        down,
        encoder,
        pushes: Vec::new(),
        out,
        done: false,
    };
    let stream = futures_util::stream::unfold(writer, |mut w| async move {
        while w.out.is_empty() {
            if w.done {
                return None;
            }
            w.fill().await;
        }
        let chunk = w.out.pop_front()?;
        Some((Ok::<_, std::convert::Infallible>(chunk), w))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_buffering(&mut response);
    response
}

/// Responses of streaming transports start with these headers so proxies
/// and CDNs pass bytes through at once.
pub(crate) fn no_buffering(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
}
