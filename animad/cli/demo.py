"""`animad demo`: the whole inbox -> train -> select -> outbox path on a tiny model (demo/run.py)."""

from __future__ import annotations

from pathlib import Path

from animad.cli.common import Verb


def demo_arguments(parser) -> None:
    parser.add_argument("--dir", default="demo", help="folder for the demo (default ./demo: beside you, easy to "
                                                     "open and to delete; a second run reuses its tiny model set)")
    parser.add_argument("--epochs", type=int, default=12,
                        help="epochs to train (default 12: enough for the tiny model's eval loss to level off, so "
                             "the floor and the shortlist have something to find, in minutes on a CPU)")


def cmd_demo(args) -> int:
    from animad.demo.run import run_demo  # writes a tiny model: imports torch

    return run_demo(Path(args.dir), epochs=args.epochs)


VERBS = [Verb("demo", "the whole inbox -> train -> select -> outbox path on a tiny model", demo_arguments,
              cmd_demo)]
