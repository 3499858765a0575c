"""Subcommands of this area (filled in by its module owner)."""

from __future__ import annotations

import argparse


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the ``wsigym`` parser."""
