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

/// How a batch crosses the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The record worlds: a `list<message>` of typed WIT records.
    Records,
    /// The packed worlds: one `list<u8>` per batch (`docs/packed-abi.md`).
    Packed,
}

impl World {
    /// The WIT name of this world in `encoding`.
    pub fn wit_name(self, encoding: Encoding) -> &'static str {
        match (self, encoding) {
            (World::Processor, Encoding::Records) => "weir:processor/processor@0.1.0",
            (World::Aggregator, Encoding::Records) => "weir:processor/aggregator@0.1.0",
            (World::Processor, Encoding::Packed) => "weir:processor/processor-packed@0.1.0",
            (World::Aggregator, Encoding::Packed) => "weir:processor/aggregator-packed@0.1.0",
        }
    }

    /// The world's name within the package: `processor-packed`, ...
    pub fn short_name(self, encoding: Encoding) -> &'static str {
        match (self, encoding) {
            (World::Processor, Encoding::Records) => "processor",
            (World::Aggregator, Encoding::Records) => "aggregator",
            (World::Processor, Encoding::Packed) => "processor-packed",
            (World::Aggregator, Encoding::Packed) => "aggregator-packed",
        }
    }

    fn entry_point(self, encoding: Encoding) -> &'static str {
        match (self, encoding) {
            (World::Processor, Encoding::Records) => "process",
            (World::Aggregator, Encoding::Records) => "process-batch",
            (World::Processor, Encoding::Packed) => "process-packed",
            (World::Aggregator, Encoding::Packed) => "process-batch-packed",
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

/// The entry points that identify each world.
const ENTRY_POINTS: [(World, Encoding); 4] = [
    (World::Processor, Encoding::Records),
    (World::Aggregator, Encoding::Records),
    (World::Processor, Encoding::Packed),
    (World::Aggregator, Encoding::Packed),
];

/// Finds which weir world (and encoding) a compiled component implements.
pub fn world_of(engine: &Engine, component: &Component) -> Result<(World, Encoding)> {
    let ty = component.component_type();
    let exported: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let has = |name: &str| exported.contains(&name);
    let found: Vec<(World, Encoding)> =
        ENTRY_POINTS.into_iter().filter(|&(world, encoding)| has(world.entry_point(encoding))).collect();
    let (world, encoding) = match found[..] {
        [one] => one,
        [] => bail!(
            "component does not implement a weir world: it exports none of `process` (processor), \
             `process-batch` (aggregator), `process-packed` (processor-packed) or `process-batch-packed` \
             (aggregator-packed); its exports are [{}]",
            exported.join(", ")
        ),
        _ => bail!(
            "component exports several weir entry points ({}): a plugin implements exactly one weir world",
            found.iter().map(|&(w, e)| format!("`{}`", w.entry_point(e))).collect::<Vec<_>>().join(", ")
        ),
    };
    if !has("init") {
        bail!(
            "component looks like a {} (it exports `{}`) but does not export `init`",
            world.short_name(encoding),
            world.entry_point(encoding)
        );
    }
    Ok((world, encoding))
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
    /// Record or packed form of the world.
    pub encoding: Encoding,
    /// Exported names.
    pub exports: Vec<String>,
    /// Imported interfaces and functions.
    pub imports: Vec<String>,
}

/// Lists a component's exports and imports.
pub fn describe(engine: &Engine, component: &Component, world: World, encoding: Encoding) -> Description {
    let ty = component.component_type();
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(format!("{name}{}", kind_suffix(&item.ty)));
    }
    let imports = ty.imports(engine).map(|(name, item)| format!("{name}{}", kind_suffix(&item.ty))).collect();
    Description { world, encoding, exports, imports }
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
