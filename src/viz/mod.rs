//! Pictures: a shared canvas for labelled image grids, the activation-map sheet of `ferrovision
//! viz activations` and the augmentation preview of `ferrovision augment preview`.

pub mod activations;
pub mod augment_preview;
pub mod canvas;
