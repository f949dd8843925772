"""Run a whole consortium on one machine, over the real code paths.

:func:`run_demo` is what ``confed demo`` does. Every party runs as it would in
production, only on loopback:

1. *Data*: :mod:`consortium.simulate` writes each simulated hospital's files
   (or, with ``data=DIR``, real per-site folders laid out like the ABIDE PCP
   release are described in place).
2. *Coordinator*: ``confed coord init`` makes a root with an SQLite database
   under ``out/coordinator`` (in its own process, while the site files are
   written), and ``confed coord serve`` runs as a separate process on a free
   loopback port.
3. *Sites*: ``confed site init`` makes each site's keys and config (the
   command's function, called in this process); the demo operator's admin
   token is issued with the coordinator's library
   (:func:`consortium.auth.issue_token`, audited), never read from printed
   output; the operator registers each public key over the HTTP API (what
   ``confed coord site add`` does on the coordinator host) and hands the site
   the token the API answered with. Each site then runs ``confed site compute`` and
   ``confed site submit`` in its own process (``python -m consortium.demo
   site ...``), several sites at once, largest first.
4. *Release and analyses*: the release is created over the API (as
   ``confed coord release create``);
   :func:`consortium.analysis.pipeline.run_analysis` runs the DMN mixed model
   (with and without ComBat) and site meta-analysis, the network means, every
   edge and every voxel on :func:`consortium.releases.open_release`; and
   :func:`consortium.report.render_report` writes one HTML page.

Timings of every stage, the planted and recovered effect sizes and the QC
exclusions go to ``out/summary.json`` and are printed.

Modules: :mod:`.processes` (child processes and the coordinator server),
:mod:`.site_setup` (site folders, configs, registration, the site process),
:mod:`.run` (:func:`run_demo`) and :mod:`.summary`.
"""

from __future__ import annotations

from .processes import CoordinatorServer, DemoError, confed_command, free_port
from .run import MARKER, RELEASE, DemoResult, operator_token, run_demo
from .site_setup import NOTHING_SUBMITTED, DemoSite, RealDataOptions, site_main
from .summary import format_summary

__all__ = [
    "MARKER",
    "NOTHING_SUBMITTED",
    "RELEASE",
    "CoordinatorServer",
    "DemoError",
    "DemoResult",
    "DemoSite",
    "RealDataOptions",
    "confed_command",
    "format_summary",
    "free_port",
    "operator_token",
    "run_demo",
    "site_main",
]
