"""The policy models: their options, the tiny models built here, loading a model and its
tokenizer, vision-language helpers, and the warm start of the tiny models."""
