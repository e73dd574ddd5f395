//! [`Router`]: which handler gets which event type.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use eddy_core::{check_upcasts, Envelope, Event, Handler, HandlerError, JsonCodec};
use futures::future::BoxFuture;

/// A handler with its event type erased, so one router holds handlers of many types.
pub(crate) trait Route: Send + Sync {
    fn call<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), HandlerError>>;
}

struct Typed<E, H> {
    handler: H,
    _event: PhantomData<fn(E)>,
}

impl<E: Event, H: Handler<E>> Route for Typed<E, H> {
    fn call<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            // A payload that does not decode is poison: retrying will not help. Nor will
            // one of a schema version newer than `E` knows, which decoding refuses.
            let event = JsonCodec::decode::<E>(envelope).map_err(HandlerError::from)?;
            self.handler.handle(event, envelope).await
        })
    }
}

/// Maps event types to handlers. Events of a type without a handler are skipped and
/// committed (a topic may carry events this consumer does not care about).
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<&'static str, Arc<dyn Route>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.routes.keys().collect();
        types.sort();
        f.debug_struct("Router")
            .field("event_types", &types)
            .finish()
    }
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes events of type `E` to `handler`.
    ///
    /// # Panics
    /// If `E::TYPE` already has a handler: two handlers for one type in one consumer is
    /// a wiring mistake, caught at start-up. Likewise if `E`'s upcasters leave a gap
    /// ([`check_upcasts`]): a stored event of the missing version could never be read.
    pub fn route<E: Event, H: Handler<E>>(mut self, handler: H) -> Self {
        if let Err(gap) = check_upcasts::<E>() {
            panic!(
                "event type {} routed with a gap in its upcasters: {gap}",
                E::TYPE
            );
        }
        let previous = self.routes.insert(
            E::TYPE,
            Arc::new(Typed {
                handler,
                _event: PhantomData,
            }),
        );
        assert!(previous.is_none(), "event type {} routed twice", E::TYPE);
        self
    }

    pub(crate) fn get(&self, event_type: &str) -> Option<&Arc<dyn Route>> {
        self.routes.get(event_type)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
