//! Using trained models: labelling new images (`predict`, later the web page) and exporting a
//! run's model (`export`).

pub mod export;
pub mod predict;
