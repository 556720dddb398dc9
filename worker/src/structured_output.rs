//! How a reply's JSON shape is asked for, negotiated per client (one endpoint and its models).
//!
//! Servers differ: OpenAI and vLLM enforce `response_format: {type: json_schema}`;
//! llama-cpp-python answers it with HTTP 500 (`Input should be 'text' or 'json_object'`) but
//! enforces a schema sent as `{type: json_object, schema}`; others take only `json_object`, or no
//! `response_format` at all. [`Negotiated`] starts at the mode configured ([`StructuredOutput`];
//! `auto` starts at `json_schema`) and steps down once per refusal that names the response format
//! — `json_schema` → `json_object` (with the schema, and the schema written into the prompt) →
//! `prompt` (the schema in the prompt only) — so a server that refused a shape is never sent it
//! again by this process. Replies are parsed tolerantly by the callers either way.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{Value, json};

/// The structured-output mode asked for (`--structured-output`, `PRINCIPIA_LLM_STRUCTURED_OUTPUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StructuredOutput {
    /// Start at `json_schema`, step down on refusals.
    #[default]
    Auto,
    /// `response_format: {type: json_schema}` only.
    JsonSchema,
    /// `response_format: {type: json_object, schema}` and the schema in the prompt.
    JsonObject,
    /// No `response_format`: the schema in the prompt, the reply parsed tolerantly.
    Prompt,
}

impl std::str::FromStr for StructuredOutput {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        match value.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "auto" => Ok(StructuredOutput::Auto),
            "json_schema" => Ok(StructuredOutput::JsonSchema),
            "json_object" => Ok(StructuredOutput::JsonObject),
            "prompt" => Ok(StructuredOutput::Prompt),
            _ => Err(()),
        }
    }
}

/// The shape actually sent, from the most to the least enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutputShape {
    JsonSchema = 0,
    JsonObject = 1,
    Prompt = 2,
}

impl OutputShape {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => OutputShape::JsonSchema,
            1 => OutputShape::JsonObject,
            _ => OutputShape::Prompt,
        }
    }

    /// The name used in reports and logs (`json_schema`, `json_object`, `prompt`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutputShape::JsonSchema => "json_schema",
            OutputShape::JsonObject => "json_object",
            OutputShape::Prompt => "prompt",
        }
    }

    /// The `response_format` value for a schema `name`/`schema`, if this shape sends one.
    pub fn response_format(self, name: &str, schema: &Value, strict: bool) -> Option<Value> {
        match self {
            OutputShape::JsonSchema => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": strict},
            })),
            OutputShape::JsonObject => Some(json!({"type": "json_object", "schema": schema})),
            OutputShape::Prompt => None,
        }
    }

    /// Whether the schema must also be written into the prompt (the server does not get it as a
    /// constraint of its own, or may ignore it).
    pub fn schema_in_prompt(self) -> bool {
        self != OutputShape::JsonSchema
    }
}

impl fmt::Display for OutputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The instruction appended to the last user message when the schema travels in the prompt
/// (named, so that a reader of the conversation, or the test server, knows which it is).
pub fn schema_instruction(name: &str, schema: &Value) -> String {
    format!(
        "\n\nReply with one JSON object and nothing else. It must follow this JSON Schema ({name}):\n{schema}"
    )
}

/// The shape a client currently sends; shared by every call of the client.
#[derive(Debug)]
pub struct Negotiated {
    shape: AtomicU8,
    /// The lowest shape a refusal may step down to (`auto` may fall to `prompt`; a fixed mode
    /// stays where it is).
    floor: OutputShape,
}

impl Negotiated {
    pub fn new(mode: StructuredOutput) -> Self {
        let (start, floor) = match mode {
            StructuredOutput::Auto => (OutputShape::JsonSchema, OutputShape::Prompt),
            StructuredOutput::JsonSchema => (OutputShape::JsonSchema, OutputShape::JsonSchema),
            StructuredOutput::JsonObject => (OutputShape::JsonObject, OutputShape::JsonObject),
            StructuredOutput::Prompt => (OutputShape::Prompt, OutputShape::Prompt),
        };
        Negotiated {
            shape: AtomicU8::new(start as u8),
            floor,
        }
    }

    /// The shape to send now.
    pub fn current(&self) -> OutputShape {
        OutputShape::from_u8(self.shape.load(Ordering::Relaxed))
    }

    /// After `refused` was refused: the next shape to try and whether this call made the step
    /// (so that it is said once), or `None` when there is none (a fixed mode, or already at the
    /// floor). Concurrent refusals of the same shape step down once.
    pub fn step_down(&self, refused: OutputShape) -> Option<(OutputShape, bool)> {
        if refused >= self.floor {
            return None;
        }
        let next = OutputShape::from_u8(refused as u8 + 1);
        let changed = self
            .shape
            .compare_exchange(
                refused as u8,
                next as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        Some((self.current().max(next), changed))
    }
}

/// Whether a server's error message blames the response format of the request.
pub fn refuses_response_format(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("response_format")
        || message.contains("json_schema")
        || message.contains("json_object")
        || message.contains("structured output")
        || message.contains("guided_json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_steps_down_to_prompt_and_no_further() {
        let negotiated = Negotiated::new(StructuredOutput::Auto);
        assert_eq!(negotiated.current(), OutputShape::JsonSchema);
        assert_eq!(
            negotiated.step_down(OutputShape::JsonSchema),
            Some((OutputShape::JsonObject, true))
        );
        // A second refusal of the shape already left does not step down twice.
        assert_eq!(
            negotiated.step_down(OutputShape::JsonSchema),
            Some((OutputShape::JsonObject, false))
        );
        assert_eq!(
            negotiated.step_down(OutputShape::JsonObject),
            Some((OutputShape::Prompt, true))
        );
        assert_eq!(negotiated.step_down(OutputShape::Prompt), None);
        assert_eq!(negotiated.current(), OutputShape::Prompt);
    }

    #[test]
    fn a_fixed_mode_never_steps_down() {
        let negotiated = Negotiated::new(StructuredOutput::JsonSchema);
        assert_eq!(negotiated.step_down(OutputShape::JsonSchema), None);
        assert_eq!(negotiated.current(), OutputShape::JsonSchema);
        let negotiated = Negotiated::new(StructuredOutput::JsonObject);
        assert_eq!(negotiated.current(), OutputShape::JsonObject);
        assert_eq!(negotiated.step_down(OutputShape::JsonObject), None);
    }

    #[test]
    fn shapes_render_their_response_format() {
        let schema = json!({"type": "object"});
        let sent = OutputShape::JsonSchema.response_format("items", &schema, true);
        assert_eq!(sent.unwrap()["json_schema"]["name"], "items");
        let sent = OutputShape::JsonObject.response_format("items", &schema, true);
        assert_eq!(
            sent.unwrap(),
            json!({"type": "json_object", "schema": {"type": "object"}})
        );
        assert_eq!(
            OutputShape::Prompt.response_format("items", &schema, true),
            None
        );
        assert!(!OutputShape::JsonSchema.schema_in_prompt());
        assert!(OutputShape::Prompt.schema_in_prompt());
    }

    #[test]
    fn refusals_are_recognised_by_the_field_they_name() {
        assert!(refuses_response_format(
            "1 validation error: ('body', 'response_format', 'type') Input should be 'text' or 'json_object'"
        ));
        assert!(refuses_response_format(
            "json_schema response format is not supported"
        ));
        assert!(!refuses_response_format("CUDA out of memory"));
        assert_eq!(
            "json-object".parse::<StructuredOutput>(),
            Ok(StructuredOutput::JsonObject)
        );
        assert!("xml".parse::<StructuredOutput>().is_err());
    }
}
