//! Using trained models on new images: the `predict` command (and later the web page).

pub mod predict;
