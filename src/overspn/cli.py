"""The ``overspn`` command line.

Each subcommand lives in its own module under :mod:`overspn.commands` and exposes ``register(subparsers)``, which
adds its parser and sets ``handler`` to a function taking the parsed arguments and returning an exit status.
Expected failures (any :class:`OverspnError`, a missing file) print one line and exit non-zero, without traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DivergenceError, OverspnError

COMMANDS = ("reproduce", "dynamics", "compare", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overspn", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"overspn.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"overspn.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except DivergenceError as error:
        print(f"overspn {args.command}: error: {error}", file=sys.stderr)
        return 3
    except (OverspnError, OSError) as error:
        print(f"overspn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"overspn {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
