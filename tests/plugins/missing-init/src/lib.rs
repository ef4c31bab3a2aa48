//! Test crate: a component that looks like a processor (it exports a
//! `process` function) but does not export `init`, so `weir check` must refuse
//! it naming the missing export. Its own inline world, not the weir WIT.

wit_bindgen::generate!({
    inline: r#"
        package test:missing-init;

        world missing-init {
            export process: func(batch: list<u8>) -> u32;
        }
    "#,
    world: "missing-init",
});

struct MissingInit;

impl Guest for MissingInit {
    fn process(batch: Vec<u8>) -> u32 {
        batch.len() as u32
    }
}

export!(MissingInit);
