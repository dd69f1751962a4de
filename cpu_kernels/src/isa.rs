//! Which SIMD kernels this CPU runs, decided once at run time from CPUID.
//!
//! The build machines change kind between sessions (AMD EPYC with AVX2 one day, Intel Xeon with
//! AVX-512 VNNI the next), and one binary must run its best kernels on each, so nothing here
//! depends on build-time target features.

use std::sync::OnceLock;

/// The kernel family in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 (F, BW, VL, VNNI): `vpdpbusd` on ymm registers (32 of them) for the int8 dot
    /// products of the 32-value block kinds, zmm `vpmaddubsw` + `vpdpwssd` for the K-quants;
    /// four activation rows per microkernel.
    Avx512Vnni,
    /// AVX2 + FMA + F16C: `vpmaddubsw` + `vpmaddwd` for int8 dot products, two rows per
    /// microkernel (16 ymm registers).
    Avx2,
    /// Plain Rust for any other CPU: correct, not fast.
    Portable,
}

impl Isa {
    /// The best family this CPU supports. `GATEWAY_CPU_KERNELS=avx2|portable` forces a lower
    /// one (benchmarks and tests compare families on one machine).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::best_supported();
            match std::env::var("GATEWAY_CPU_KERNELS").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if best != Isa::Portable => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// The best family this CPU supports, ignoring the override.
    pub fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let vnni = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx2 && vnni {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every family this CPU can run, best first (tests compare them).
    pub fn all_supported() -> Vec<Isa> {
        match Self::best_supported() {
            Isa::Avx512Vnni => vec![Isa::Avx512Vnni, Isa::Avx2, Isa::Portable],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }

    /// A short name for logs and benchmark reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}
