"""Tables and figures rendered from MLflow queries only (plus the published reference panel)."""
