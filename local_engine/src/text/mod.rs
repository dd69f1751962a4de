//! Text in and out of the model: the tokenizer built from GGUF metadata, the chat template,
//! incremental detokenisation and stop strings.

pub mod chat_prompt;
pub mod chat_template;
pub mod detokenize;
pub mod pre_tokenize;
pub mod spm;
pub mod stop;
pub mod token_bytes;
pub mod tokenizer;

pub use chat_prompt::RenderedChat;
pub use chat_template::ChatTemplate;
pub use detokenize::IncrementalDecoder;
pub use engine_api::ChatMessage;
pub use stop::StopMatcher;
pub use tokenizer::GgufTokenizer;
