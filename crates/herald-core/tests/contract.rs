//! The engine contract (`herald_core::testing::contract`) against the
//! memory engine. Its two "nodes" are one node: the memory engine has no
//! store to share, so what one does the other sees trivially.

use async_trait::async_trait;
use herald_core::event::EventOptions;
use herald_core::namespace::Namespaces;
use herald_core::testing::contract::Backend;
use herald_core::Node;

struct Memory;

#[async_trait]
impl Backend for Memory {
    async fn pair_with_events(
        &self,
        namespaces: Namespaces,
        events: Option<EventOptions>,
    ) -> [Node; 2] {
        let node = Node::memory_with_events(namespaces, events);
        [node.clone(), node]
    }
}

herald_core::contract_tests!(Memory);
