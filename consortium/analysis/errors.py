"""The error of an analysis that cannot run (a ``ValueError``: the CLI prints it, no traceback)."""

__all__ = ["AnalysisError"]


class AnalysisError(ValueError):
    """The analysis cannot run on this dataset with these parameters."""
