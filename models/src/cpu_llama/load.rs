//! Loading a GGUF into the kernels' layout: each weight matrix repacked (4-bit and 8-bit
//! blocks as stored, anything else re-quantized to Q8_0), Q/K/V and gate/up stacked (or read
//! stacked, as Phi-3 stores them), every shape checked against the metadata, RoPE tables
//! computed with the file's frequency factors.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use cpu_kernels::isa::Isa;
use cpu_kernels::matmul::PackedMatrix;
use cpu_kernels::quant::BLOCK;

use super::{CpuLlama, Error, Fused, Layer};
use crate::config::{ModelConfig, WeightFormat};

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

/// A weight matrix in the kernels' layout: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K
/// as stored (unless `format` asks for Q8_0), any other type (F16, BF16, Q2_K, Q3_K, ...)
/// dequantized and re-quantized to Q8_0.
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
        GgmlDType::Q4K if keep => PackedMatrix::from_q4_k(&bytes()?, n, k),
        GgmlDType::Q6K if keep => PackedMatrix::from_q6_k(&bytes()?, n, k),
        GgmlDType::Q5K if keep => PackedMatrix::from_q5_k(&bytes()?, n, k),
        GgmlDType::Q5_0 if keep => PackedMatrix::from_q5_0(&bytes()?, n, k),
        GgmlDType::Q5_1 if keep => PackedMatrix::from_q5_1(&bytes()?, n, k),
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

impl CpuLlama {
    /// Loads and repacks the weights of a GGUF of one of the supported architectures.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        config: ModelConfig,
        format: WeightFormat,
    ) -> Result<Self, Error> {
        let c = &config;
        if !c.hidden.is_multiple_of(BLOCK)
            || !c.q_dim().is_multiple_of(BLOCK)
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
        let has = |name: &str| ct.tensor_infos.contains_key(name);
        let embeddings = load_matrix(ct, reader, "token_embd.weight", format)?;
        expect_shape("token_embd.weight", &embeddings, c.vocab_size, c.hidden)?;
        let lm_head = match has("output.weight") {
            true => {
                let head = load_matrix(ct, reader, "output.weight", format)?;
                expect_shape("output.weight", &head, c.vocab_size, c.hidden)?;
                Some(head)
            }
            false => None,
        };
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("blk.{i}");
            let name = |n: &str| format!("{p}.{n}.weight");
            let mut matrix = |n: &str| load_matrix(ct, reader, &name(n), format);
            // Phi-3 stores Q, K and V as one tensor, gate and up as one (gate first): the
            // stacked layout the kernels run anyway.
            let qkv = Fused::new(match has(&name("attn_qkv")) {
                true => vec![matrix("attn_qkv")?],
                false => vec![matrix("attn_q")?, matrix("attn_k")?, matrix("attn_v")?],
            });
            expect_shape(&name("attn_qkv"), &qkv, q_dim + 2 * kv_dim, c.hidden)?;
            let wo = matrix("attn_output")?;
            expect_shape(&name("attn_output"), &wo, c.hidden, q_dim)?;
            let gate_up = Fused::new(match has(&name("ffn_gate")) {
                true => vec![matrix("ffn_gate")?, matrix("ffn_up")?],
                false => vec![matrix("ffn_up")?],
            });
            expect_shape(&name("ffn_gate/up"), &gate_up, 2 * c.ffn, c.hidden)?;
            let down = matrix("ffn_down")?;
            // Every packed matrix has whole blocks of inputs (checked at repacking), so the MLP
            // width the step's buffers use (`config.ffn`) is a multiple of BLOCK too.
            expect_shape(&name("ffn_down"), &down, c.hidden, c.ffn)?;
            let mut vector = |n: &str, len: usize| -> Result<Vec<f32>, Error> {
                let v = load_vector(ct, reader, &format!("{p}.{n}"))?;
                match v.len() == len {
                    true => Ok(v),
                    false => Err(Error::WrongLength {
                        tensor: format!("{p}.{n}"),
                        len: v.len(),
                        expected: len,
                    }),
                }
            };
            let qkv_bias = match has(&format!("{p}.attn_q.bias")) {
                true => {
                    let mut bias = vector("attn_q.bias", q_dim)?;
                    bias.extend(vector("attn_k.bias", kv_dim)?);
                    bias.extend(vector("attn_v.bias", kv_dim)?);
                    Some(bias)
                }
                false => None,
            };
            let qk_norm = match has(&name("attn_q_norm")) {
                true => Some((
                    vector("attn_q_norm.weight", c.head_dim)?,
                    vector("attn_k_norm.weight", c.head_dim)?,
                )),
                false => None,
            };
            let post_norms = match has(&format!("{p}.post_attention_norm.weight")) {
                true => Some((
                    vector("post_attention_norm.weight", c.hidden)?,
                    vector("post_ffw_norm.weight", c.hidden)?,
                )),
                false => None,
            };
            layers.push(Layer {
                post_norms,
                attn_norm: vector("attn_norm.weight", c.hidden)?,
                ffn_norm: vector("ffn_norm.weight", c.hidden)?,
                qkv,
                qkv_bias,
                qk_norm,
                wo,
                gate_up,
                down,
            });
        }
        let final_norm = load_vector(ct, reader, "output_norm.weight")?;
        // Llama 3.1+ divides each RoPE frequency by a factor stored beside the weights; LongRoPE
        // (Phi-3 128k) stores short-context factors the same way.
        let freq_factors = ["rope_freqs.weight", "rope_factors_short.weight"]
            .into_iter()
            .find(|n| has(n))
            .map(|n| load_vector(ct, reader, n))
            .transpose()?;
        if let Some(f) = &freq_factors {
            if f.len() != c.head_dim / 2 {
                return Err(Error::WrongLength {
                    tensor: "rope_freqs.weight".into(),
                    len: f.len(),
                    expected: c.head_dim / 2,
                });
            }
        }
        let inv_freq = rope_frequencies(c.rope_base, c.head_dim, freq_factors.as_deref());
        let inv_freq_sliding = c
            .sliding_window
            .as_ref()
            .map(|w| rope_frequencies(w.rope_base, c.head_dim, None));
        Ok(Self {
            isa: Isa::detect(),
            embeddings,
            lm_head,
            layers,
            final_norm,
            inv_freq,
            inv_freq_sliding,
            config,
        })
    }
}

/// The `[outputs, inputs]` of a matrix or of fused ones.
trait Shape {
    fn shape(&self) -> [usize; 2];
}

impl Shape for PackedMatrix {
    fn shape(&self) -> [usize; 2] {
        [self.n(), self.k()]
    }
}

impl Shape for Fused {
    fn shape(&self) -> [usize; 2] {
        [self.n(), self.k()]
    }
}

fn expect_shape(name: &str, m: &impl Shape, n: usize, k: usize) -> Result<(), Error> {
    match m.shape() == [n, k] {
        true => Ok(()),
        false => Err(Error::WrongShape {
            tensor: name.to_string(),
            found: m.shape(),
            expected: [n, k],
        }),
    }
}

/// RoPE's frequency of each pair, `base^(-2i / head_dim) / factor_i`, as candle's reference
/// computes them in f32.
fn rope_frequencies(base: f32, head_dim: usize, factors: Option<&[f32]>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
            f / factors.map_or(1.0, |factors| factors[i])
        })
        .collect()
}
