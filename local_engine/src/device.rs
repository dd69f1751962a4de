//! Device names as operators write them (`cpu`, `cuda:0`, `metal:0`), parsed at the edge.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{EngineError, Result};

/// Where a local engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (our own kernels).
    Cpu,
    /// CUDA GPU number N (the `cuda` feature).
    Cuda(usize),
    /// Apple GPU number N (the `metal` feature).
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let ordinal = |rest: &str| {
            rest.parse::<usize>()
                .map_err(|_| format!("`{s}`: expected a device number after the colon"))
        };
        match s.split_once(':') {
            None if s == "cpu" => Ok(Self::Cpu),
            Some(("cuda", n)) => Ok(Self::Cuda(ordinal(n)?)),
            Some(("metal", n)) => Ok(Self::Metal(ordinal(n)?)),
            _ => Err(format!(
                "unknown device `{s}` (expected `cpu`, `cuda:N` or `metal:N`)"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The default for `CoreConfig::lower_class_step_tokens` here: on a CPU every token
    /// lengthens the step, so batch work gets one token beside interactive work; an
    /// accelerator's decode step barely grows with the batch, so it gets 64.
    pub fn default_lower_class_step_tokens(self) -> usize {
        match self {
            DeviceSpec::Cpu => 1,
            _ => 64,
        }
    }

    /// Opens the device. GPU devices need a build with the matching cargo feature (`cuda`,
    /// `metal`); without it, asking for one is a clear load error, never a silent CPU fallback.
    pub fn open(&self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(ordinal) => Device::new_cuda(*ordinal).map_err(EngineError::execution),
            #[cfg(feature = "metal")]
            Self::Metal(ordinal) => Device::new_metal(*ordinal).map_err(EngineError::execution),
            #[allow(unreachable_patterns)]
            other => Err(EngineError::Load(format!(
                "device `{other}` needs a build with the `{}` feature, which this build does not have",
                other.backend()
            ))),
        }
    }

    /// The cargo feature a device needs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda(_) => "cuda",
            Self::Metal(_) => "metal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("metal:0".parse::<DeviceSpec>(), Ok(DeviceSpec::Metal(0)));
        assert!("cuda".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu:0".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        assert!(DeviceSpec::Cpu.open().is_ok());
    }
}
