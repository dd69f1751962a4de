//! Typed errors of engines. The gateway maps them to HTTP responses in one place.

/// Why an engine could not load, accept or run a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request does not fit the model (prompt plus `max_tokens` beyond the context window).
    #[error("this model's maximum context length is {context_length} tokens; the request has {prompt_tokens} prompt tokens and asks for {max_tokens} completion tokens")]
    ContextLengthExceeded {
        /// Tokens the model can hold.
        context_length: usize,
        /// Tokens of the prompt.
        prompt_tokens: usize,
        /// Completion tokens asked for.
        max_tokens: usize,
    },
    /// The prompt is empty after templating and tokenisation.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A prompt token id outside the vocabulary.
    #[error("token id {0} is outside the model's vocabulary")]
    InvalidTokenId(u32),
    /// The chat template could not be rendered for these messages.
    #[error("chat template error: {0}")]
    ChatTemplate(String),
    /// The tenant already has as many requests waiting as it may: refused rather than queued
    /// for minutes.
    #[error("too many requests waiting: {waiting} of this tenant's requests wait for this engine (limit {limit}); retry later")]
    QueueFull {
        /// Its requests waiting when this one came.
        waiting: usize,
        /// Its bound.
        limit: usize,
    },
    /// A batch-class request met an engine already backed up: shed, to be retried later.
    #[error("the engine is overloaded: {waiting} requests wait for it, and batch-class requests are shed above {limit}; retry later")]
    Overloaded {
        /// Requests waiting when this one came.
        waiting: usize,
        /// The engine's shedding threshold.
        limit: usize,
    },
    /// The engine thread is gone (it panicked or was shut down).
    #[error("the engine is not running")]
    EngineStopped,
    /// Loading the model file failed.
    #[error("model load failed: {0}")]
    Load(String),
    /// Fetching the default model failed.
    #[error("model fetch failed: {0}")]
    Fetch(String),
    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The model failed while running a step (a tensor operation, a kernel, a device); the
    /// source is the backend's own error.
    #[error("model execution failed: {0}")]
    Execution(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An embedding input the model cannot take (empty, too long, unknown token ids).
    #[error("{0}")]
    InvalidInput(String),
    /// A `response_format` or tool schema the grammar engine cannot use (the request's fault).
    #[error("invalid output schema: {0}")]
    InvalidConstraint(String),
    /// The grammar engine failed while generating (a bug, or its limits reached).
    #[error("structured output failed: {0}")]
    Constraint(String),
    /// A batch of embeddings failed in the model (every caller in it is told).
    #[error("embedding failed: {0}")]
    Embedding(String),
}

impl EngineError {
    /// A failure of a model backend (a tensor operation, a kernel, a device), kept as the
    /// source.
    pub fn execution(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        EngineError::Execution(Box::new(error))
    }
}

/// The engines' result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
