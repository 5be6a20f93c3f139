"""The record of a run: metrics, events and prompts in its directory, checkpoints and what the
driver keeps in them, why a run stops (and the stop policy for non-finite training), and plots."""
