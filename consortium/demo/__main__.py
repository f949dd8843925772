"""``python -m consortium.demo site CONFIG BUNDLE URL TOKEN_FILE``: one site's process."""

from __future__ import annotations

import sys

from .site_setup import site_main

if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "site":
        sys.exit("usage: python -m consortium.demo site CONFIG BUNDLE URL TOKEN_FILE")
    sys.exit(site_main(*sys.argv[2:]))
