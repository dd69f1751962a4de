//! The limits and sizes of one engine's request core.

/// Limits and sizes of one engine's request core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Tokens per forward pass (decodes plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences in the running batch at once.
    pub max_running: usize,
    /// Largest prompt chunk of one sequence per step: long prompts are prefilled over several
    /// steps while the other sequences keep decoding.
    pub prefill_chunk: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV pool size in positions (rounded up to whole blocks); `None`: the model's context
    /// length, so one sequence can always fill its context.
    pub kv_cache_tokens: Option<usize>,
    /// Keep a record of every step (tests, debugging): the engine hands out [`crate::StepRecord`]s.
    pub record_steps: bool,
    /// Admit across tenants by virtual token counters (fair share), and preempt for a tenant
    /// short of its share of slots; off: first come, first served.
    pub fair_share: bool,
    /// Tokens per step that batch-class sequences may use while interactive ones run
    /// (`None`: no limit). Small on a CPU, where every token lengthens the step.
    pub lower_class_step_tokens: Option<usize>,
    /// Requests of one tenant that may wait for admission, unless its own terms say otherwise;
    /// beyond it the engine refuses (`EngineError::QueueFull`).
    pub max_waiting_per_tenant: usize,
    /// Batch-class requests are shed (`EngineError::Overloaded`) while this many
    /// requests already wait.
    pub shed_batch_above: usize,
    /// Pause a step between layers to start a newly arrived request of a higher class than any
    /// in the step (CPU path), so that its first token does not wait for the whole step.
    pub pause_for_higher_class: bool,
    /// Running slots batch-class sequences may not take, kept for interactive arrivals (so
    /// that one can start inside a paused step without preempting anyone).
    pub reserved_interactive_slots: usize,
    /// Keep computed prompt blocks for reuse by later requests of the same scope (tenant or
    /// sharing group) whose prompts start alike: they skip that part of the prefill.
    pub prefix_cache: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 512,
            max_running: 64,
            prefill_chunk: 256,
            block_size: 16,
            kv_cache_tokens: None,
            record_steps: false,
            fair_share: true,
            lower_class_step_tokens: None,
            max_waiting_per_tenant: 256,
            shed_batch_above: 64,
            pause_for_higher_class: true,
            reserved_interactive_slots: 1,
            prefix_cache: true,
        }
    }
}
