"""TAK: textual anatomical knowledge, text encoders, the text-driven head and contrastive alignment.

Not implemented yet: the package reserves the place the design card gives it. The shared pieces
TAK builds on exist in ``methods/common`` (V-Net, EMA teacher, ramps, magic-cube partition).
"""
