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

# Subcommand -> the module that registers it (one module may register several).
SUBCOMMANDS: dict[str, str] = {
    "compute": "image_ancestry.offline",
    "tree": "image_ancestry.offline",
    "import": "image_ancestry.importer.commands",
    "compare": "image_ancestry.compare.commands",
    "run": "image_ancestry.operator.commands",
    "cluster": "image_ancestry.controlplane.commands",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that subcommand's module is imported.

    ``compute`` in CI then never imports the operator, the webhook or the control plane,
    and cannot be broken by them.
    """
    parser = argparse.ArgumentParser(
        prog="image-ancestry",
        description="Compute container images' ancestors, parent and base image.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    if command in SUBCOMMANDS:
        modules = [SUBCOMMANDS[command]]
    else:
        modules = list(dict.fromkeys(SUBCOMMANDS.values()))
    for module_name in modules:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
