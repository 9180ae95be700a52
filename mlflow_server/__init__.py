"""Starting, checking and stopping a real MLflow tracking server."""
