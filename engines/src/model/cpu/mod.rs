//! The CPU forward path: llama over repacked quantized weights, built for speed.
//!
//! Data flow of a step: token rows -> [`quant`] (RMSNorm fused with int8 quantization) ->
//! [`matmul`] (4-bit/8-bit weight tiles, kernels chosen by [`isa`]) -> [`math`] (RoPE, SiLU)
//! -> [`kv`] (the paged f16 cache) -> [`attention`] -> back into the residual stream; all on
//! the one thread pool of [`parallel`], driven by [`model`].

pub mod attention;
pub mod isa;
pub mod kv;
pub mod math;
pub mod matmul;
pub mod model;
pub mod parallel;
pub mod quant;
