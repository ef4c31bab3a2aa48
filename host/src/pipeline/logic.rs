//! What a stage runs: a WASM plugin, or a native Rust function registered by
//! an embedding program (and by benchmarks, to compare the two side by side).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::message::{Message, Outcome};
use crate::plugin::swap::HotPlugin;
use crate::plugin::{Instance, InstanceError, Plugin, StageContext, World};

/// A native processor: one outcome per input, by position, like the WIT
/// `process` export.
pub type NativeFn = Arc<dyn Fn(&[Message]) -> Vec<Outcome> + Send + Sync>;

/// Native processors by name, for stages with `plugin = "native:NAME"`.
pub type NativeStages = HashMap<String, NativeFn>;

/// The logic of a stage.
#[derive(Clone)]
pub enum StageLogic {
    /// A WASM component, swappable while running.
    Wasm(Arc<HotPlugin>),
    /// A native function (always a processor).
    Native(NativeFn),
}

impl fmt::Debug for StageLogic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageLogic::Wasm(hot) => hot.current().fmt(f),
            StageLogic::Native(_) => f.write_str("Native"),
        }
    }
}

impl StageLogic {
    /// The world the logic implements.
    pub fn world(&self) -> World {
        match self {
            StageLogic::Wasm(hot) => hot.world(),
            StageLogic::Native(_) => World::Processor,
        }
    }

    /// The version the next batch runs on (`None` for native logic).
    pub fn version(&self) -> Option<Arc<Plugin>> {
        match self {
            StageLogic::Wasm(hot) => Some(hot.current()),
            StageLogic::Native(_) => None,
        }
    }

    /// A running copy of `version` (from [`StageLogic::version`]): an
    /// instance with `init` called, or the function.
    pub fn start(&self, version: Option<&Plugin>, context: Arc<StageContext>) -> Result<Runner, InstanceError> {
        Ok(match (self, version) {
            (StageLogic::Native(f), _) => Runner::Native(f.clone()),
            (StageLogic::Wasm(_), Some(plugin)) => Runner::Wasm(Instance::new(plugin, context)?),
            (StageLogic::Wasm(hot), None) => Runner::Wasm(Instance::new(&hot.current(), context)?),
        })
    }
}

/// A running copy of a stage's logic, owned by one worker.
pub enum Runner {
    /// A WASM instance.
    Wasm(Instance),
    /// A native function.
    Native(NativeFn),
}

impl Runner {
    /// Runs a processor batch.
    pub fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, InstanceError> {
        match self {
            Runner::Wasm(instance) => instance.process(batch),
            Runner::Native(f) => Ok(f(batch)),
        }
    }

    /// Runs an aggregator batch.
    pub fn process_batch(
        &mut self,
        batch_key: Option<&[u8]>,
        batch: &[Message],
    ) -> Result<Result<Vec<crate::message::Output>, String>, InstanceError> {
        match self {
            Runner::Wasm(instance) => instance.process_batch(batch_key, batch),
            Runner::Native(_) => Err(InstanceError::WrongWorld("native stages are processors")),
        }
    }
}
