"""The record of a run: metrics, events and prompts in its directory, checkpoints, why a run
stops, and plots."""
