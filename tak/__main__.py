"""``python -m tak`` moved to ``python -m benchmarks tak`` (the knowledge commands read datasets
through the harness, and ``tak`` never imports the harness)."""
import sys

if __name__ == "__main__":
    args = " ".join(sys.argv[1:]) or "validate amos"
    print(f"python -m tak moved: run `python -m benchmarks tak {args}`", file=sys.stderr)
    sys.exit(2)
