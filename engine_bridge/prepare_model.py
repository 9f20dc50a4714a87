"""`python -m engine_bridge.prepare_model`: convert the default model once (a no-op when done)."""

import argparse
import logging
import sys
from pathlib import Path

from engine_bridge.default_model import default_model_dir, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare the default model (SmolLM2-135M-Instruct).")
    parser.add_argument("--cache-dir", type=Path, default=None, help="folder for prepared models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[prepare-model] %(message)s", stream=sys.stderr)
    path = prepare(default_model_dir(args.cache_dir) if args.cache_dir else None)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
