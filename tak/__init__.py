"""TAK: textual anatomical knowledge, text encoders, the text-driven head and contrastive alignment.

- ``tak/knowledge/*.yaml``, :mod:`tak.knowledge`: the shipped per-organ position and shape descriptions
  and their structured claims; :mod:`tak.validator` measures the claims on label maps;
  :mod:`tak.generator` / :mod:`tak.llm`: the paper's two-agent generator on any OpenAI-compatible API.
- :mod:`tak.encoders` / :mod:`tak.cache`: MiniLM (offline) and the CLIP family (local weights), with an
  on-disk embedding cache.
- :mod:`tak.model` / :mod:`tak.contrast`: the text-driven head and the contrastive alignment used by
  the ``tak`` method (``methods/tak.py``).
- ``python -m benchmarks tak validate|generate|encoders`` (in the harness: the commands read datasets).
"""
