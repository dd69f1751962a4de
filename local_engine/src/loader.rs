//! Loading a GGUF file into everything a local engine needs: weights, tokenizer, chat template.

use std::path::PathBuf;

use candle_core::quantized::gguf_file;

use crate::device::DeviceSpec;
use crate::error::{EngineError, Result};
use crate::text::{ChatTemplate, GgufTokenizer};
use engine_api::Prompt;
use engine_api::SamplingDefaults;
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
}

impl LoadedModel {
    /// Reads the file: weights (repacked for the device), tokenizer, template.
    pub fn load(options: &ModelFile) -> Result<Self> {
        let path = &options.path;
        let mut file = std::fs::File::open(path)
            .map_err(|e| EngineError::Load(format!("cannot open {}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
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
        Ok(Self {
            model,
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
