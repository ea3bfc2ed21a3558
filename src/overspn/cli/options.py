"""The options every command shares, spelled and checked the same way everywhere.

``--out`` (each command defaults it to its own folder or file under ``results/``, derived from what it runs),
``--dataset`` (repeatable, comma-separated lists accepted), ``--data-dir``, ``--seed``, ``--threads``, ``--quiet`` and
``--restart``; and the help formatter that shows every option's default.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from overspn.cli.argtypes import non_negative_int, output_path

RESULTS = Path("results")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, appending ``(default: X)`` to every option whose help does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.default is None
                or action.default is argparse.SUPPRESS or isinstance(action.default, bool)):
            return text
        return f"{text} (default: %(default)s)"


def max_threads() -> int:
    """The most torch threads a command accepts: four per CPU core (far more only slows down or crashes)."""
    return 4 * (os.cpu_count() or 1)


def threads(text: str) -> int:
    """argparse type: a number of torch threads, 1 to :func:`max_threads`."""
    limit = max_threads()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {limit}, got {text!r}") from None
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {limit} (4 per CPU core), got {text!r}")
    return value


class DatasetList(argparse.Action):
    """``--dataset a --dataset b`` and ``--dataset a,b`` both give ``["a", "b"]``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        names = [name.strip() for name in str(values).split(",")]
        if not all(names):
            raise argparse.ArgumentError(self, f"expected data set names separated by commas, got {values!r}")
        current = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, current + [n for n in names if n not in current])


def add_out(parser: argparse.ArgumentParser, default: str, what: str = "output folder") -> None:
    parser.add_argument("--out", type=output_path, metavar="PATH", help=f"{what} (default: {default})")


def add_datasets(parser: argparse.ArgumentParser, default: str, alias: str | None = None) -> None:
    parser.add_argument("--dataset", action=DatasetList, metavar="NAME",
                        help=f"data set by name; repeatable, or comma-separated (default: {default})")
    if alias:  # an older spelling, still accepted
        parser.add_argument(alias, action=DatasetList, dest="dataset", help=argparse.SUPPRESS)


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="folder of NAME/NAME.{train,valid,test}.data (default: $OVERSPN_DATA, else a download "
                             "cache)")


def add_seed(parser: argparse.ArgumentParser, help_text: str = "random seed, an integer >= 0") -> None:
    parser.add_argument("--seed", type=non_negative_int, default=0, help=help_text)


def add_threads(parser: argparse.ArgumentParser, default: int | None = 1) -> None:
    shown = "torch's own choice" if default is None else str(default)
    parser.add_argument("--threads", type=threads, default=default, metavar="N",
                        help=f"torch threads, 1 to {max_threads()} (default: {shown}; results are reproducible for a "
                             "fixed count)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress, no summary)")


def add_restart(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restart", action="store_true",
                        help="start afresh: ignore what an earlier run left in the output folder")


def set_threads(count: int | None) -> None:
    if count is not None:
        torch.set_num_threads(count)


def slug(text: str) -> str:
    """``text`` as a file-name-safe word: letters, digits, ``.``, ``_``, ``-``, ``+``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-") or "run"


def settings_suffix(args: argparse.Namespace, defaults: dict[str, Any]) -> str:
    """``""`` when every option in ``defaults`` has its default value, else ``-`` and a short hash of those that
    differ: the same command always maps to the same folder, different settings never share one."""
    changed = {key: getattr(args, key) for key in sorted(defaults) if getattr(args, key) != defaults[key]}
    if not changed:
        return ""
    text = json.dumps(changed, sort_keys=True, default=str)
    return "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def default_out(command: str, name: str | Iterable[str], args: argparse.Namespace | None = None,
                defaults: dict[str, Any] | None = None) -> Path:
    """``results/COMMAND/NAME[-HASH]``: the default output folder of a command, unique to its settings."""
    words = [name] if isinstance(name, str) else list(name)
    suffix = settings_suffix(args, defaults) if args is not None and defaults else ""
    return RESULTS / command / (slug("+".join(words)) + suffix)


def parser_defaults(parser: argparse.ArgumentParser, keys: Iterable[str]) -> dict[str, Any]:
    return {key: parser.get_default(key) for key in keys}
