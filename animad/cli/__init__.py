"""The command line (`animad ...`); nothing below it imports it."""

from animad.cli.main import main

__all__ = ["main"]
