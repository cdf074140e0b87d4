"""The one front door: `galaxy-edge VERB ...` (like Ultralytics' `yolo MODE ARGS`).

Each stage package owns its verbs in a light `cli` module (argparse only); the heavy
work is imported inside the handler, so `galaxy-edge run --help` never loads
TensorFlow and training-side verbs load their package only when invoked.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from galaxy_edge import __version__
from galaxy_edge.errors import GalaxyEdgeError

# Stage modules that add verbs, in the order they appear in `galaxy-edge --help`.
VERB_MODULES = (
    "annotations.cli",
    "simulation.cli",
    "classification.cli",
    "export.cli",
    "edge.cli",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in epilogs as written and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galaxy-edge",
        description="Detect and classify galaxies in camera frames, on a Raspberry Pi or a Coral.",
        formatter_class=HelpFormatter,
        epilog="example:\n  galaxy-edge run --source samples --out out/demo\n"
        "  galaxy-edge annotations check data/labelimg\n\n"
        "`galaxy-edge VERB --help` shows each verb's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"galaxy-edge {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module_name in VERB_MODULES:
        importlib.import_module(module_name).register(verbs, HelpFormatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except GalaxyEdgeError as error:
        print(f"galaxy-edge {args.verb}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"galaxy-edge {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
