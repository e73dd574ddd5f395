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

/// A handler of whole envelopes, whatever their type and payload: for consumers that
/// keep or forward events rather than act on their content (a dead-letter store, an
/// archive). Routed with [`Router::any`].
#[eddy_core::async_trait]
pub trait EnvelopeHandler: Send + Sync + 'static {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError>;
}

struct Whole<H>(H);

impl<H: EnvelopeHandler> Route for Whole<H> {
    fn call<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.0.handle(envelope))
    }
}

/// Maps event types to handlers. Events of a type without a handler go to the
/// [`Router::any`] handler if there is one, else are skipped and committed (a topic may
/// carry events this consumer does not care about).
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<&'static str, Arc<dyn Route>>,
    any: Option<Arc<dyn Route>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.routes.keys().collect();
        types.sort();
        f.debug_struct("Router")
            .field("event_types", &types)
            .field("any", &self.any.is_some())
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

    /// Routes every event no typed route takes to `handler`, as it arrived.
    ///
    /// # Panics
    /// If the router has an `any` handler already.
    pub fn any<H: EnvelopeHandler>(mut self, handler: H) -> Self {
        assert!(self.any.is_none(), "a router takes one `any` handler");
        self.any = Some(Arc::new(Whole(handler)));
        self
    }

    pub(crate) fn get(&self, event_type: &str) -> Option<&Arc<dyn Route>> {
        self.routes.get(event_type).or(self.any.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.any.is_none()
    }
}
