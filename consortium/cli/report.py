"""`confed report` command."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    analysis: Path = typer.Option(..., "--analysis", help="Analysis output directory."),
    output: Path = typer.Option(..., "-o", "--output", help="HTML file to write."),
) -> None:
    typer.echo("confed report is not implemented yet", err=True)
    raise typer.Exit(2)
