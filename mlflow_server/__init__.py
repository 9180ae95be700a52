"""Starting, checking and stopping a real MLflow tracking server (see server.py)."""
