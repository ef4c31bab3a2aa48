//! Test plugin: passes messages through with header `v` = "2".

const VERSION: &str = "2";

include!("../../tag.rs");
