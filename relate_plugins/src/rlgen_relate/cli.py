"""The `rlgen-relate` command: RELATE tools that run outside a training run.

Each subcommand lives in its own module, named in ``COMMANDS``, which exposes
``register(subparsers)``: it adds its parser (with its own sub-subcommands if it likes) and
sets ``func`` to a handler returning the exit code. Adding a command is one line here, and a
module is imported only to build its parser, so heavy libraries load inside handlers.
Expected failures (RlgenError) print one message and exit with code 2, like `rlgen`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rlgen import run_cli


#: subcommand name -> module exposing ``register(subparsers)``
COMMANDS: dict[str, str] = {
    "ctcvr": "rlgen_relate.ctcvr.cli",
    "ablation": "rlgen_relate.lab.ablation",
    "demo": "rlgen_relate.lab.demo",
    "data": "rlgen_relate.searchads.cli",
    "simulate": "rlgen_relate.lab.simulator.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlgen-relate", description="RELATE tools for rlgen.")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable console lines")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
