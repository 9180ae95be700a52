"""The shared harness: data, training loop, sliding-window evaluation, metrics, tracking, CLI."""

# The behaviour version of the harness itself (sampler, training loop, sliding-window evaluation,
# metric summary): part of every run key. Bump it when a change alters the numbers a run produces.
HARNESS_VERSION = "1"
