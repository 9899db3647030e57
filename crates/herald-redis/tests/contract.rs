//! The engine contract (`herald_core::testing::contract`) against the Redis
//! engine: each test starts its own `redis-server`, and its two nodes are
//! two engines (each with its own hub) on that one Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::engine::Engine;
use herald_core::event::EventOptions;
use herald_core::hub::Hub;
use herald_core::namespace::Namespaces;
use herald_core::testing::contract::Backend;
use herald_core::Node;
use herald_redis::{RedisEngine, RedisOptions};

mod support;

use support::RedisServer;

struct Redis {
    server: RedisServer,
    /// Each pair gets its own key prefix: a fresh store on the same server.
    pairs: AtomicU64,
}

impl Redis {
    fn start() -> Self {
        Self {
            server: RedisServer::start(),
            pairs: AtomicU64::new(0),
        }
    }

    async fn node(
        &self,
        namespaces: Arc<Namespaces>,
        prefix: &str,
        events: Option<EventOptions>,
    ) -> Node {
        let hub = Arc::new(Hub::new());
        let options = RedisOptions {
            prefix: prefix.to_owned(),
            ping_interval: Duration::from_millis(500),
            max_backoff: Duration::from_millis(500),
            events,
            ..RedisOptions::default()
        };
        let engine = RedisEngine::connect_with(
            &self.server.url(),
            Arc::clone(&hub),
            Arc::clone(&namespaces),
            options,
        )
        .await
        .expect("connect to the test redis");
        Node::new(hub, engine as Arc<dyn Engine>, namespaces)
    }
}

#[async_trait]
impl Backend for Redis {
    async fn pair_with_events(
        &self,
        namespaces: Namespaces,
        events: Option<EventOptions>,
    ) -> [Node; 2] {
        let prefix = format!("contract{}", self.pairs.fetch_add(1, Ordering::Relaxed));
        let namespaces = Arc::new(namespaces);
        [
            self.node(Arc::clone(&namespaces), &prefix, events.clone())
                .await,
            self.node(namespaces, &prefix, events).await,
        ]
    }
}

herald_core::contract_tests!(Redis::start());
