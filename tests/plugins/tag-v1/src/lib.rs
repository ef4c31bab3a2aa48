//! Test plugin: passes messages through with header `v` = "1".

const VERSION: &str = "1";

include!("../../tag.rs");
