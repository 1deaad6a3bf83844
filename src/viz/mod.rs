//! Pictures of what a model does: a shared canvas for labelled image grids (augmentation
//! previews, activation maps) and the activation-map sheet of `ferrovision viz activations`.

pub mod activations;
pub mod canvas;
