//! The CPU kernels of the forward pass, built for speed on the build machines' x86 CPUs.
//!
//! Data flow of a step: token rows -> [`quant`] (RMSNorm fused with int8 quantization) ->
//! [`matmul`] (4-bit/8-bit weight tiles, kernels chosen by [`isa`] at run time from CPUID) ->
//! [`math`] (RoPE, SiLU; [`lowrank`]: LoRA's `B·(A·x)`) -> [`kv`] (the paged f16 cache) -> [`attention`] -> back into the
//! residual stream; all on the one thread pool of [`parallel`]. The model that drives them
//! (`models::cpu_llama`) lives apart: kernels know no architecture.

#![warn(missing_docs)]

pub mod attention;
pub mod isa;
pub mod kv;
pub mod lowrank;
pub mod math;
pub mod matmul;
pub mod parallel;
pub mod quant;
