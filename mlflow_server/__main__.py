"""``python -m mlflow_server {start,stop,status} [--port P] [--host H] [--backend-store-uri URI]``."""
import argparse
import os
import sys

from mlflow_server.server import ServerConfig, ServerError, experiment_links, start, status, stop

parser = argparse.ArgumentParser(prog="python -m mlflow_server")
parser.add_argument("action", choices=["start", "stop", "status"])
parser.add_argument("--host", default=os.environ.get("MLFLOW_HOST", "127.0.0.1"))
parser.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", "5000")))
parser.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"))
args = parser.parse_args()
config = ServerConfig(args.host, args.port, backend_store_uri=args.backend_store_uri)
try:
    if args.action == "start":
        url = start(config)
        print(f"MLflow server at {url} (backend {config.backend}); use it with:\n  export MLFLOW_TRACKING_URI={url}")
        for name, link in experiment_links(url).items():
            print(f"  {name}: {link}")
    elif args.action == "stop":
        print("stopped" if stop(config) else f"no server started from {config.pid_file}")
    else:
        print(status(config))
except ServerError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
