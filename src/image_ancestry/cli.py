"""The ``image-ancestry`` command: one entry point, one module per subcommand.

Each subcommand lives beside the concern it drives and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed namespace and
returning the process exit code. Registering modules keep heavy imports (kopf, the Kubernetes
client) inside their handlers, so that ``compute`` in CI does not pay for them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from image_ancestry import __version__

# Exit codes follow kubectl's habit: 0 ok, 1 a runtime failure, 2 bad usage or bad input.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Subcommand name -> module that registers it.
SUBCOMMANDS: dict[str, str] = {
    "import": "image_ancestry.importer.commands",
    "cluster": "image_ancestry.controlplane.commands",
    "run": "image_ancestry.operator.commands",
    "offline": "image_ancestry.offline",
    "compare": "image_ancestry.compare.commands",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image-ancestry",
        description="Compute container images' ancestors, parent and base image.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMANDS.values():
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
