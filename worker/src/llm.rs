//! Placeholder: replaced by the OpenAI-compatible chat client.
