//! Loading a GGUF file into everything a local engine needs: weights, tokenizer, chat template.

use std::path::PathBuf;

use candle_core::quantized::gguf_file;

use crate::device::DeviceSpec;
use crate::error::{EngineError, Result};
use crate::text::{ChatTemplate, GgufTokenizer};
use engine_api::Prompt;
use engine_api::{ModelFileFacts, SamplingDefaults};
use models::{LlamaModel, WeightFormat};
use structured_output::Grammars;

/// A model file and how to load it.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// The GGUF file.
    pub path: PathBuf,
    /// Where to run it.
    pub device: DeviceSpec,
    /// Keep the file's 4-bit weights, or re-quantize to 8 bits.
    pub weight_format: WeightFormat,
}

/// The model, its tokenizer and its chat template.
pub struct LoadedModel {
    /// The network.
    pub model: LlamaModel,
    /// The tokenizer from the GGUF metadata.
    pub tokenizer: GgufTokenizer,
    /// The chat template from the GGUF metadata, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Structured output's grammar compiler over this tokenizer.
    pub grammars: Grammars,
    /// The sampling settings the file recommends (`general.sampling.*`).
    pub sampling_defaults: SamplingDefaults,
    /// Its architecture and quantization, for `/v1/models`.
    pub facts: ModelFileFacts,
    /// The LoRA adapters requests have named, loaded over it.
    pub adapters: crate::adapters::Adapters,
}

impl LoadedModel {
    /// Reads the file: weights (repacked for the device), tokenizer, template.
    pub fn load(options: &ModelFile) -> Result<Self> {
        let path = &options.path;
        let (mut file, content) = read_header(path)?;
        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        let chat_template = match content.metadata.get("tokenizer.chat_template") {
            Some(v) => {
                let source = v
                    .to_string()
                    .map_err(|e| EngineError::Load(e.to_string()))?;
                let name = |id: Option<u32>| {
                    id.and_then(|id| tokenizer.id_to_token(id))
                        .unwrap_or_default()
                };
                let bos = name(tokenizer.bos_id());
                let eos = name(tokenizer.eos_ids().first().copied());
                Some(ChatTemplate::new(source, &bos, &eos)?)
            }
            None => None,
        };
        let model = LlamaModel::from_gguf(
            &content,
            &mut file,
            &options.device.open()?,
            options.weight_format,
        )
        .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        let facts = ModelFileFacts {
            architecture: Some(model.config().architecture.name().to_string()),
            quantization: quantization_name(&content),
        };
        let adapters = crate::adapters::Adapters::new(
            model.config().clone(),
            crate::adapters::DEFAULT_BUDGET_BYTES,
        );
        Ok(Self {
            model,
            adapters,
            facts,
            sampling_defaults: crate::sampling::defaults_from_gguf(&content.metadata),
            grammars: Grammars::over(&crate::text::token_bytes::token_env(&tokenizer)?)?,
            tokenizer,
            chat_template,
        })
    }

    /// Renders a conversation (with the functions it may call) and tokenises it: control
    /// tokens come from the template's markup only, never from the messages' text
    /// ([`crate::text::chat_prompt`]).
    fn render_chat(
        &self,
        messages: &[engine_api::ChatMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<Vec<u32>> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| EngineError::ChatTemplate("this model has no chat template".into()))?;
        let tokenizer = &self.tokenizer;
        let rendered = crate::text::chat_prompt::render(template, messages, tools, &|text| {
            tokenizer.spells_a_control_token(text)
        })?;
        self.tokenizer
            .encode_with_markup(&rendered.text, &rendered.client)
    }

    /// Renders (for chat) and tokenises a prompt, checking every id is in the vocabulary. A
    /// completion's raw prompt is the tenant's own text and keeps its control tokens (a client
    /// of `/v1/completions` writes the whole prompt, markup included); a conversation's
    /// messages never produce them.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Text(text) => self.tokenizer.with_bos(self.tokenizer.encode(text)?),
            Prompt::Chat(messages) => self.tokenizer.with_bos(self.render_chat(messages, None)?),
            Prompt::ChatWithTools(messages, tools) => self
                .tokenizer
                .with_bos(self.render_chat(messages, Some(tools))?),
            Prompt::Tokens(ids) => {
                let vocab = self.model.config().vocab_size as u32;
                if let Some(&bad) = ids.iter().find(|&&id| id >= vocab) {
                    return Err(EngineError::InvalidTokenId(bad));
                }
                ids.clone()
            }
        };
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        Ok(ids)
    }
}

/// The id a model file is served under when the configuration gives none: a slug of its
/// `general.name`, else of the file's stem (`Qwen2.5 0.5B Instruct` -> `qwen2.5-0.5b-instruct`).
pub fn model_id_from_file(path: &std::path::Path) -> Result<String> {
    let (_, content) = read_header(path)?;
    let name = content
        .metadata
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .map(|name| slug(name))
        .filter(|s| !s.is_empty());
    let stem = || {
        path.file_stem()
            .map(|s| slug(&s.to_string_lossy()))
            .filter(|s| !s.is_empty())
    };
    name.or_else(stem).ok_or_else(|| {
        EngineError::Load(format!(
            "{}: no `general.name` and no file name to name the model by",
            path.display()
        ))
    })
}

/// Opens a GGUF file and reads its header: within bounds first (`models::gguf_check`), then
/// candle's parse. The file is returned for the tensors' data.
fn read_header(path: &std::path::Path) -> Result<(std::fs::File, gguf_file::Content)> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| EngineError::Load(format!("cannot open {}: {e}", path.display())))?;
    models::gguf_check::check(&mut file)
        .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    Ok((file, content))
}

/// Lower case; letters, digits, `.` and `_` kept; every other run of characters one `-`.
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.trim().chars().flat_map(char::to_lowercase) {
        match c.is_alphanumeric() || c == '.' || c == '_' {
            true => out.push(c),
            false if !out.is_empty() && !out.ends_with('-') => out.push('-'),
            false => {}
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The file's quantization by llama.cpp's `general.file_type` names, else the type most of
/// its matrices have.
fn quantization_name(content: &gguf_file::Content) -> Option<String> {
    const FILE_TYPES: &[(u32, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (11, "Q3_K_S"),
        (12, "Q3_K_M"),
        (13, "Q3_K_L"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (32, "BF16"),
    ];
    let declared = content
        .metadata
        .get("general.file_type")
        .and_then(|v| v.to_u32().ok())
        .and_then(|t| FILE_TYPES.iter().find(|(id, _)| *id == t))
        .map(|(_, name)| name.to_string());
    declared.or_else(|| {
        let mut counts = std::collections::BTreeMap::new();
        for info in content.tensor_infos.values() {
            if info.shape.dims().len() == 2 {
                *counts.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(name, _)| name.to_uppercase())
    })
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_keep_versions_and_join_words() {
        assert_eq!(slug("Qwen2.5 0.5B Instruct"), "qwen2.5-0.5b-instruct");
        assert_eq!(
            slug("  Meta Llama 3.1 8B / Instruct!! "),
            "meta-llama-3.1-8b-instruct"
        );
        assert_eq!(slug("EXAONE_3.5"), "exaone_3.5");
        assert_eq!(slug("---"), "");
    }
}
