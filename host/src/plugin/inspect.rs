//! What a component is: its world, exports and imports, and the reasons a
//! file is refused as a plugin. Backs `weir check` and every plugin load.

use std::fmt;

use anyhow::{Result, anyhow, bail};
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

/// The weir worlds a plugin can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `weir:processor/processor`: `init` + `process`.
    Processor,
    /// `weir:processor/aggregator`: `init` + `process-batch`.
    Aggregator,
}

impl World {
    /// The world's WIT name.
    pub fn wit_name(self) -> &'static str {
        match self {
            World::Processor => "weir:processor/processor@0.1.0",
            World::Aggregator => "weir:processor/aggregator@0.1.0",
        }
    }

    fn entry_point(self) -> &'static str {
        match self {
            World::Processor => "process",
            World::Aggregator => "process-batch",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Processor => "processor",
            World::Aggregator => "aggregator",
        })
    }
}

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Binary version + layer of a core module (version 1, layer 0).
const CORE_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// Refuses, with a precise reason, bytes that are not a wasm component.
pub fn check_is_component(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        bail!("not a WebAssembly file (no `\\0asm` header)");
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        bail!(
            "this is a core WebAssembly module, not a component: build the plugin for the \
             `wasm32-wasip2` target (`weir build DIR` does), or wrap the module with `wasm-tools component new`"
        );
    }
    Ok(())
}

/// Finds which weir world a compiled component implements.
pub fn world_of(engine: &Engine, component: &Component) -> Result<World> {
    let ty = component.component_type();
    let exported: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let has = |name: &str| exported.contains(&name);
    let world = match (has("process"), has("process-batch")) {
        (true, false) => World::Processor,
        (false, true) => World::Aggregator,
        (true, true) => {
            bail!("component exports both `process` and `process-batch`: a plugin implements exactly one weir world")
        }
        (false, false) => bail!(
            "component does not implement a weir world: it exports neither `process` (processor) nor \
             `process-batch` (aggregator); its exports are [{}]",
            exported.join(", ")
        ),
    };
    if !has("init") {
        bail!("component looks like a {world} (it exports `{}`) but does not export `init`", world.entry_point());
    }
    Ok(world)
}

/// Rewords a failed `instantiate_pre`: the usual cause is an import weir does
/// not provide (e.g. `wasi:http`).
pub fn explain_link_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow!("component needs an import weir does not provide: {error:#}")
}

/// Rewords a failed export type check (an older or foreign WIT).
pub fn explain_export_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow!("component exports do not match the weir:processor@0.1.0 WIT: {error:#}")
}

/// A description of a component for `weir check`.
#[derive(Debug)]
pub struct Description {
    /// The weir world it implements.
    pub world: World,
    /// Exported names.
    pub exports: Vec<String>,
    /// Imported interfaces and functions.
    pub imports: Vec<String>,
}

/// Lists a component's exports and imports.
pub fn describe(engine: &Engine, component: &Component, world: World) -> Description {
    let ty = component.component_type();
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(format!("{name}{}", kind_suffix(&item.ty)));
    }
    let imports = ty.imports(engine).map(|(name, item)| format!("{name}{}", kind_suffix(&item.ty))).collect();
    Description { world, exports, imports }
}

fn kind_suffix(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => " (func)",
        ComponentItem::ComponentInstance(_) => "",
        ComponentItem::Type(_) => " (type)",
        ComponentItem::Resource(_) => " (resource)",
        _ => "",
    }
}
