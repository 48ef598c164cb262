"""The `microal` command: a table of subcommands (``main.COMMANDS``), each a small function in the
module of its command group."""

from microal.cli.main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
