//! Loading a llama GGUF into the kernels' layout: each weight matrix repacked (4-bit and 8-bit
//! blocks as stored, anything else re-quantized to Q8_0), Q/K/V and gate/up stacked, RoPE
//! tables computed.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use cpu_kernels::isa::Isa;
use cpu_kernels::matmul::PackedMatrix;
use cpu_kernels::quant::BLOCK;

use super::{CpuLlama, Error, Layer};
use crate::config::{LlamaConfig, WeightFormat};

fn load_qtensor<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<QTensor, Error> {
    ct.tensor(reader, name, &Device::Cpu)
        .map_err(|e| read_error(name, e))
}

fn load_vector<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Vec<f32>, Error> {
    load_qtensor(ct, reader, name)?
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| read_error(name, e))
}

fn read_error(tensor: &str, source: candle_core::Error) -> Error {
    Error::Read {
        tensor: tensor.to_string(),
        source,
    }
}

/// A weight matrix in the kernels' layout: 4-bit and 8-bit blocks as stored (unless `format`
/// asks for Q8_0), any other type re-quantized to Q8_0.
fn load_matrix<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
    format: WeightFormat,
) -> Result<PackedMatrix, Error> {
    let tensor = load_qtensor(ct, reader, name)?;
    let (n, k) = match tensor.shape().dims() {
        [n, k] => (*n, *k),
        dims => {
            return Err(Error::NotAMatrix {
                tensor: name.to_string(),
                dims: dims.to_vec(),
            })
        }
    };
    let bytes = || tensor.data().map_err(|e| read_error(name, e));
    let keep = format == WeightFormat::AsStored;
    let matrix = match tensor.dtype() {
        GgmlDType::Q4_0 if keep => PackedMatrix::from_q4_0(&bytes()?, n, k),
        GgmlDType::Q4_1 if keep => PackedMatrix::from_q4_1(&bytes()?, n, k),
        GgmlDType::Q8_0 => PackedMatrix::from_q8_0(&bytes()?, n, k),
        _ => {
            let values = tensor
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| read_error(name, e))?;
            PackedMatrix::quantize_q8_0(&values, n, k)
        }
    };
    matrix.map_err(|source| Error::Shape {
        tensor: name.to_string(),
        source,
    })
}

fn stack(name: &str, parts: &[&PackedMatrix]) -> Result<PackedMatrix, Error> {
    PackedMatrix::stack(parts).ok_or_else(|| Error::Unstackable {
        layer: name.to_string(),
    })
}

impl CpuLlama {
    /// Loads and repacks the weights of a llama GGUF.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        config: LlamaConfig,
        format: WeightFormat,
    ) -> Result<Self, Error> {
        let c = &config;
        if !c.hidden.is_multiple_of(BLOCK)
            || !c.head_dim.is_multiple_of(2)
            || !c.n_heads.is_multiple_of(c.n_kv_heads)
        {
            return Err(Error::UnsupportedShape {
                hidden: c.hidden,
                head_dim: c.head_dim,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
            });
        }
        let embeddings = load_matrix(ct, reader, "token_embd.weight", format)?;
        let lm_head = match ct.tensor_infos.contains_key("output.weight") {
            true => Some(load_matrix(ct, reader, "output.weight", format)?),
            false => None,
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        let mut ffn = 0;
        for i in 0..c.n_layers {
            let p = format!("blk.{i}");
            let mut matrix =
                |name: &str| load_matrix(ct, reader, &format!("{p}.{name}.weight"), format);
            let (wq, wk, wv, wo) = (
                matrix("attn_q")?,
                matrix("attn_k")?,
                matrix("attn_v")?,
                matrix("attn_output")?,
            );
            let (gate, up, down) = (matrix("ffn_gate")?, matrix("ffn_up")?, matrix("ffn_down")?);
            // Every packed matrix has whole blocks of inputs (checked at repacking), so the MLP
            // size the down projection reads is a multiple of BLOCK too.
            ffn = gate.n();
            layers.push(Layer {
                attn_norm: load_vector(ct, reader, &format!("{p}.attn_norm.weight"))?,
                ffn_norm: load_vector(ct, reader, &format!("{p}.ffn_norm.weight"))?,
                qkv: stack(&p, &[&wq, &wk, &wv])?,
                wo,
                gate_up: stack(&p, &[&gate, &up])?,
                down,
            });
        }
        let final_norm = load_vector(ct, reader, "output_norm.weight")?;
        let (cos, sin) = rope_tables(c);
        Ok(Self {
            isa: Isa::detect(),
            ffn,
            embeddings,
            lm_head,
            layers,
            final_norm,
            cos,
            sin,
            config,
        })
    }
}

/// RoPE cosines and sines `[context_length, head_dim / 2]`, as candle's reference computes
/// them (f32 angles `position * base^(-2i / head_dim)`).
fn rope_tables(c: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = c.head_dim / 2;
    let inv_freq: Vec<f32> = (0..c.head_dim)
        .step_by(2)
        .map(|i| 1.0 / c.rope_base.powf(i as f32 / c.head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(c.context_length * half);
    let mut sin = Vec::with_capacity(c.context_length * half);
    for p in 0..c.context_length {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}
