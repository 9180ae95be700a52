"""TAK: textual anatomical knowledge, text encoders, the text-driven head and contrastive alignment."""
