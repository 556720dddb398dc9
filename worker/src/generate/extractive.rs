//! Placeholder: replaced by the extractive generator.
