"""The ``overspn`` command line.

Each subcommand lives in its own module under :mod:`overspn.cli` and exposes ``register(subparsers)``, which
adds its parser and sets ``handler`` to a function taking the parsed arguments and returning an exit status.
Expected failures print one line, ``overspn COMMAND: error: WHAT``, and exit non-zero without a traceback: a bad
option (status 2, from argparse), any :class:`OverspnError` or file-system error (2), a request that needs more
memory than is available (2), a number out of range or input nested too deeply (OverflowError, RecursionError: 2), a
divergence (3), an interrupt (130). Any other exception is a bug: it prints one ``internal error`` line and exits
with status 1 (the traceback with ``OVERSPN_TRACEBACK=1``). Option values are checked by the
types of :mod:`overspn.cli.argtypes`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, NoReturn

from overspn import __version__
from overspn.cli.options import HelpFormatter
from overspn.errors import DivergenceError, OverspnError

COMMANDS = ("train", "eval", "sample", "mpe", "info", "reproduce", "dynamics", "compare")


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line naming the command and a pointer to ``--help``."""

    commands: dict[str, argparse.ArgumentParser]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)  # every option's help shows its default
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="overspn", description="Sum-product networks: train them, use them, and study "
                            "the optimisation of overparametrized ones.")
    parser.add_argument("--version", action="version", version=f"overspn {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"overspn.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"overspn.cli.{name}":
                raise
            continue
        module.register(subparsers)
    parser.commands = dict(subparsers.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the subcommand's parser, so that the message names the subcommand
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.handler(args) or 0)
    except DivergenceError as error:
        print(f"overspn {args.command}: error: {_one_line(str(error))}", file=sys.stderr)
        return 3
    except (OverspnError, OSError) as error:
        print(f"overspn {args.command}: error: {_one_line(_describe(error))}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"overspn {args.command}: error: the request needs more memory than is available (the {args.command} "
              "command ran out of memory); use smaller inputs or settings, or lower OVERSPN_MEMORY_BUDGET so that "
              "such requests are refused up front", file=sys.stderr)
        return 2
    except (OverflowError, RecursionError) as error:
        reason = "a number out of range" if isinstance(error, OverflowError) else "input nested too deeply"
        print(f"overspn {args.command}: error: {reason} ({type(error).__name__}: {_one_line(str(error))})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"overspn {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, or bad input that no check caught: still one line, unless asked for more
        if os.environ.get("OVERSPN_TRACEBACK"):
            raise
        print(f"overspn {args.command}: internal error: {type(error).__name__}: {_one_line(str(error))} (please "
              "report it; set OVERSPN_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 1


def _describe(error: BaseException) -> str:
    """The error's message; for file-system errors the reason and the file, e.g. ``No such file: results/x``."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename is not None else ""
        return f"{error.strerror}{where}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
