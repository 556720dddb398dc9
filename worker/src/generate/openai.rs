//! Placeholder: replaced by the OpenAI-compatible generator.
