//! The chat template stored in the GGUF (`tokenizer.chat_template`), rendered with minijinja as
//! Hugging Face's `apply_chat_template` and llama.cpp's server do: Python's string and dict
//! methods (`.startswith`, `.items()`), `tojson` as Python's `json.dumps` writes it,
//! `strftime_now` and today's `date_string`, and a system message folded into the first user
//! message for templates that refuse the system role (llama.cpp's polyfill).

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use engine_api::{ChatMessage, EngineError, Result};

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    supports_tools: bool,
    /// The day templates see as today (tests fix it; else the clock's, in UTC).
    today: Option<CivilDate>,
}

/// A day of the Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilDate {
    /// The year.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
}

impl CivilDate {
    /// Today, in UTC.
    pub fn today() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Self::from_days(secs.div_euclid(86_400))
    }

    /// The date `days` after 1970-01-01 (Howard Hinnant's civil-from-days).
    fn from_days(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self { year, month, day }
    }

    /// `format` with `%d %m %Y %y %b %B %%` (what chat templates ask `strftime_now` for).
    pub fn format(&self, format: &str) -> String {
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        let month = MONTHS[(self.month as usize + 11) % 12];
        let mut out = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('d') => out.push_str(&format!("{:02}", self.day)),
                Some('m') => out.push_str(&format!("{:02}", self.month)),
                Some('Y') => out.push_str(&self.year.to_string()),
                Some('y') => out.push_str(&format!("{:02}", self.year.rem_euclid(100))),
                Some('b') => out.push_str(&month[..3]),
                Some('B') => out.push_str(month),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }
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
        // As Hugging Face's `apply_chat_template` (and llama.cpp) compile them: the newline
        // after a block or comment tag dropped, the spaces before one too.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", python_json);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template_owned(TEMPLATE_NAME.to_string(), source.to_string())
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            // Templates that know tools read the `tools` variable (Hugging Face's convention).
            supports_tools: source.contains("tools"),
            today: None,
        })
    }

    /// The same template with `today` as the date it renders (`date_string`, `strftime_now`).
    pub fn with_today(mut self, today: CivilDate) -> Self {
        self.today = Some(today);
        self
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

    /// Renders; a template that refuses the system role gets the system message folded into
    /// the first user message (`system\nuser`), as llama.cpp does.
    fn render_plain(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        match self.render_once(messages, tools, add_generation_prompt) {
            Err(refused) if messages.first().is_some_and(|m| m.role == "system") => {
                let Some(folded) = fold_system(messages) else {
                    return Err(refused);
                };
                self.render_once(&folded, tools, add_generation_prompt)
                    .map_err(|_| refused)
            }
            rendered => rendered,
        }
    }

    fn render_once(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        let today = self.today.unwrap_or_else(CivilDate::today);
        let strftime_now = move |format: String| today.format(&format);
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                date_string => today.format("%d %b %Y"),
                strftime_now => minijinja::Value::from_function(strftime_now),
            })
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))
    }
}

/// The conversation with its leading system message folded into the first user message,
/// or `None` when there is no user message to fold it into.
fn fold_system(messages: &[ChatMessage]) -> Option<Vec<ChatMessage>> {
    let (system, rest) = messages.split_first()?;
    let first_user = rest.iter().position(|m| m.role == "user")?;
    let mut folded = rest.to_vec();
    let user = &mut folded[first_user];
    user.content = format!("{}\n{}", system.content, user.content);
    Some(folded)
}

/// `tojson` as Python's `json.dumps` writes it, which Hugging Face's and llama.cpp's
/// renderers follow: keys in their order, `", "` and `": "` between items (`","` and
/// newlines with `indent`), non-ASCII kept, nothing HTML-escaped.
fn python_json(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

fn write_python_json(
    value: &serde_json::Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod date_tests {
    use super::*;

    #[test]
    fn civil_dates_and_their_formats() {
        assert_eq!(
            CivilDate::from_days(0),
            CivilDate {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        // 2026-12-07 is day 20_794; 2024-02-29 (leap day) is 19_782.
        let d = CivilDate::from_days(20_794);
        assert_eq!(d.format("%d %b %Y"), "07 Dec 2026");
        assert_eq!(
            CivilDate::from_days(19_782).format("%Y-%m-%d %B %%"),
            "2024-02-29 February %"
        );
    }

    #[test]
    fn tojson_writes_as_python_does() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", "", "").unwrap();
        let x: serde_json::Value = serde_json::from_str(
            r#"{"name": "f", "arguments": {"city": "Séoul <b>"}, "n": [1, 2]}"#,
        )
        .unwrap();
        let template = t.env.get_template(TEMPLATE_NAME).unwrap();
        let out = template.render(context! { x => x }).unwrap();
        assert_eq!(
            out,
            "{\"name\": \"f\", \"arguments\": {\"city\": \"Séoul <b>\"}, \"n\": [1, 2]}|{\n  \"name\": \"f\",\n  \"arguments\": {\n    \"city\": \"Séoul <b>\"\n  },\n  \"n\": [\n    1,\n    2\n  ]\n}"
        );
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
    const WITH_TOOLS: &str = "{% if tools %}<tools>{% for tool in tools %}{{ tool.function.name }};{% endfor %}</tools>\n{% endif %}{% for message in messages %}{{ message.role }}: {% if message.tool_calls %}{% for call in message.tool_calls %}call {{ call.function.name }}({{ call.function.arguments.city }}){% endfor %}{% else %}{{ message.content }}{% endif %}{{ '\\n' }}{% endfor %}";

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
