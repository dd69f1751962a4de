//! The chat template stored in the GGUF (`tokenizer.chat_template`), rendered with minijinja as
//! Hugging Face's `apply_chat_template` does.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use engine_api::{ChatMessage, EngineError, Result};

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    supports_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat";

/// Templates call `raise_exception('...')` to reject conversations they cannot render.
fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles a Jinja template with the model's special tokens.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // Templates written for Python's jinja2 keep their whitespace as jinja2 does.
        env.set_trim_blocks(false);
        env.set_lstrip_blocks(false);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME.to_string(), source.to_string())
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            // Templates that know tools read the `tools` variable (Hugging Face's convention).
            supports_tools: source.contains("tools"),
        })
    }

    /// Does the template render `tools` itself? Otherwise they go in the system message
    /// ([`engine_api::tools::flatten`]).
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// Renders the conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Renders the conversation with the functions it may call: through the template when it
    /// knows tools, else in the system message in the Hermes format.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        if !self.supports_tools {
            let tools = tools.unwrap_or_default();
            let needs_flattening =
                !tools.is_empty() || messages.iter().any(|m| m.tool_calls.is_some());
            if needs_flattening {
                let flat = engine_api::tools::flatten(messages, tools);
                return self.render_plain(&flat, None, add_generation_prompt);
            }
        }
        self.render_plain(messages, tools, add_generation_prompt)
    }

    fn render_plain(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template stored in SmolLM2-135M-Instruct's GGUF.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_line() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t
            .render(
                &[ChatMessage::new(
                    "user",
                    "Write a short story about a robot.",
                )],
                true,
            )
            .unwrap();
        let fixture = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWrite a short story about a robot.<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(out, fixture);
    }

    #[test]
    fn renders_a_fixed_conversation_with_system_message() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                    ChatMessage::new("assistant", "Hello!"),
                    ChatMessage::new("user", "Bye"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        );
    }

    /// A template with tool syntax, in the style of Qwen2.5's (much shortened).
    const WITH_TOOLS: &str = "{% if tools %}<tools>{% for tool in tools %}{{ tool.function.name }};{% endfor %}</tools>\n{% endif %}{% for message in messages %}{{ message.role }}: {% if message.tool_calls %}{% for call in message.tool_calls %}call {{ call.function.name }}({{ call.function.arguments.city }}){% endfor %}{% else %}{{ message.content }}{% endif %}\n{% endfor %}";

    #[test]
    fn tools_go_through_a_template_that_knows_them_and_into_the_system_message_otherwise() {
        let tools = [serde_json::json!({"type": "function", "function": {"name": "get_weather"}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![
            serde_json::json!({"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}),
        ]);
        let messages = [ChatMessage::new("user", "Weather?"), call];
        let native = ChatTemplate::new(WITH_TOOLS, "", "").unwrap();
        assert!(native.supports_tools());
        assert_eq!(
            native
                .render_with_tools(&messages, Some(&tools), false)
                .unwrap(),
            "<tools>get_weather;</tools>\nuser: Weather?\nassistant: call get_weather(Oslo)\n"
        );
        let chatml = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        assert!(!chatml.supports_tools());
        let out = chatml
            .render_with_tools(&messages, Some(&tools), true)
            .unwrap();
        assert!(
            out.starts_with("<|im_start|>system\nYou are a function calling AI model."),
            "{out}"
        );
        assert!(out.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Oslo\"}}\n</tool_call>"), "{out}");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], true).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
