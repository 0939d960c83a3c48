//! The GPU arbiter on the core node: watches the GPU (NVML) and the engines, decides per backend
//! ok / pressured / shedding / down with hysteresis, and publishes that to the edges.

pub mod model;
