"""`confed report` command."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    analysis: list[Path] = typer.Option(
        ..., "--analysis", help="Analysis output directory (repeatable; prediction dirs too)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="HTML file to write."),
    title: str = typer.Option("Consortium analysis report", "--title"),
) -> None:
    from consortium.report import ReportError, render_report

    try:
        path = render_report(analysis, output, title=title)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"report written to {path}")
