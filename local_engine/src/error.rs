//! Errors of the local engine: the interface's [`EngineError`], and the model backend's own
//! errors carried as its typed source.

pub use engine_api::EngineError;

/// The local engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Turns a backend result into the engine's, keeping the backend's error as the source.
pub trait OrExecution<T> {
    /// `Err(e)` becomes [`EngineError::Execution`] with `e` as its source.
    fn or_execution(self) -> Result<T>;
}

impl<T> OrExecution<T> for candle_core::Result<T> {
    fn or_execution(self) -> Result<T> {
        self.map_err(EngineError::execution)
    }
}
