"""The shared harness: data, training loop, sliding-window evaluation, metrics, tracking, CLI."""
