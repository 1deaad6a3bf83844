//! Our own compute kernels for layers where burn's are slow, each behind a function and a module
//! that behave exactly like burn's equivalent (and fall back to it where ours do not apply).

pub mod depthwise;
