//! Using trained models: labelling new images (`predict`, the HTTP API and web page of `serve`,
//! class names in other languages) and exporting a run's model (`export`).

pub mod export;
pub mod predict;
pub mod server;
pub mod translate;
