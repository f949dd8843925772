"""The built-in analysis kinds, one module each, registered in :mod:`consortium.analysis.registry`.

Each module exposes ``run(data: ReleaseData, params: AnalysisParams, progress: Steps)
-> KindResult``: it writes its tables and figures into ``data.out`` and returns
its typed result sections (:mod:`consortium.analysis.results`).
"""
