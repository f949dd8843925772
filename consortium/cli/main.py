"""The ``confed`` command: one entry point, one sub-command group per concern.

``sites`` never imports ``consortium``; this root lives in ``consortium`` so it
can mount the site agent's commands (``confed site``) next to the coordinator's.
A site installs and runs them alone as ``confed-site`` (:mod:`sites.cli`).
Sub-command modules import only typer and the standard library at module
level; heavy libraries are imported inside the commands, so ``--help`` is fast
(``benchmarks/bench_startup.py``, ``tests/test_import_contracts.py``).
"""

from __future__ import annotations

import typer

from consortium.cli.analyze import app as analyze_app
from consortium.cli.coord import app as coord_app
from consortium.cli.demo import demo_command
from consortium.cli.predict import app as predict_app
from consortium.cli.proposal import app as proposal_app
from consortium.cli.report import report_command
from sites.cli import app as site_app

app = typer.Typer(
    name="confed",
    help="Multi-site neuroimaging consortium platform.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(site_app, name="site")  # its help is the site agent's own
app.add_typer(
    coord_app, name="coord", help="Coordinator: service, sites, imports, releases, audit."
)
app.add_typer(analyze_app, name="analyze", help="Run consortium analyses on a data release.")
app.add_typer(proposal_app, name="proposal", help="Proposal-based data access.")
app.add_typer(predict_app, name="predict", help="Site-aware prediction (leave-site-out CV).")
app.command("report", help="Render an analysis directory as one HTML report.")(report_command)
app.command("demo", help="Run a simulated consortium end to end.")(demo_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
