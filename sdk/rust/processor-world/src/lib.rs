//! Export glue for the `processor` world. Kept in its own crate so that a plugin
//! links this world's component-type section only when it exports it.

#![doc(hidden)]

mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "weir:processor/processor",
        with: {
            "weir:processor/types@0.1.0": weir_sdk_base::types,
            "weir:processor/host@0.1.0": weir_sdk_base::host,
        },
        pub_export_macro: true,
        export_macro_name: "export_processor_world",
        default_bindings_module: "weir_sdk::__private::processor_world",
    });
}

pub use bindings::*;
