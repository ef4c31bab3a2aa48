//! The plugin runtime: one wasmtime engine, compiled components cached on
//! disk by content hash, pre-linked instances, and sandboxed stores.
//!
//! - [`Runtime`] compiles and links plugins (`load`), once per content hash.
//! - [`Plugin`] is a loaded, type-checked, pre-linked component of one world.
//! - [`Instance`] is one running copy with its own `Store`, memory cap and
//!   per-call CPU deadline; a trap poisons only that instance.

pub mod bindings;
pub mod build;
mod cache;
mod clock;
mod engine;
pub mod inspect;
mod instance;
mod limits;
mod logging;
pub mod progress;
pub mod sdk;
pub mod state;
pub mod swap;
pub mod toolchain;
pub mod watch;

pub use engine::Runtime;
pub use inspect::{Encoding, World};
pub use instance::{Instance, InstanceError, StageContext, TrapKind};
pub use limits::Limits;
pub use logging::LogRate;

use std::fmt;
use std::sync::Arc;

/// Content hash of a component: the identity of a plugin version.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VersionId(blake3::Hash);

impl VersionId {
    /// Hashes a component's bytes.
    pub fn of(bytes: &[u8]) -> Self {
        VersionId(blake3::hash(bytes))
    }

    /// The full hash in hex.
    pub fn to_hex(&self) -> String {
        self.0.to_hex().to_string()
    }

    /// The short form used in logs.
    pub fn short(&self) -> String {
        self.0.to_hex()[..12].to_string()
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionId({})", self.short())
    }
}

/// A loaded plugin: compiled, checked against its world, and pre-linked so
/// instances start without re-resolving imports.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    version: VersionId,
    world: World,
    encoding: Encoding,
    pre: Pre,
    /// The compiled code (also held by `pre`; kept for `weir check`).
    component: wasmtime::component::Component,
    engine: wasmtime::Engine,
}

enum Pre {
    Processor(bindings::processor::ProcessorPre<instance::InstanceState>),
    Aggregator(bindings::aggregator::AggregatorPre<instance::InstanceState>),
    ProcessorPacked(bindings::processor_packed::ProcessorPackedPre<instance::InstanceState>),
    AggregatorPacked(bindings::aggregator_packed::AggregatorPackedPre<instance::InstanceState>),
}

impl Plugin {
    /// The content hash of the component.
    pub fn version(&self) -> &VersionId {
        &self.inner.version
    }

    /// The world the component implements.
    pub fn world(&self) -> World {
        self.inner.world
    }

    /// Whether the world is a record or a packed one.
    pub fn encoding(&self) -> Encoding {
        self.inner.encoding
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("version", &self.inner.version)
            .field("world", &self.inner.world)
            .field("encoding", &self.inner.encoding)
            .finish()
    }
}
