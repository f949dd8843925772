"""`confed demo` command."""

from __future__ import annotations

import typer


def demo_command() -> None:
    typer.echo("confed demo is not implemented yet", err=True)
    raise typer.Exit(2)
