"""Plain-language table columns, with the statistical term kept for a tooltip.

Every table of the report is declared here as a tuple of :class:`Column`: the
header a committee member reads (``label``) and the statistical term with its
meaning (``term``, rendered as ``<abbr title=...>``). Keys are the names in
``results.json``; the report never shows a raw key such as ``yi`` or ``tau2``
as a header.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCHEME_DRAWS", "Column", "harmonization_text", "scheme_text"]


@dataclass(frozen=True)
class Column:
    """One table column.

    Attributes
    ----------
    key : str
        Key of the value in a record of ``results.json``.
    label : str
        Header in plain language.
    term : str
        Statistical term and meaning, shown as a tooltip (empty: none).
    format : {"num", "p", "int", "text", "pct"}
        How the value is printed.
    digits : int
        Decimals of ``num``.
    """

    key: str
    label: str
    term: str = ""
    format: str = "num"
    digits: int = 3


SITE = Column("site", "Site", format="text")

META_SITES = (
    SITE,
    Column("n_case", "Cases", format="int"),
    Column("n_control", "Controls", format="int"),
    Column("yi", "Effect size at the site", "yi: Hedges' g, the bias-corrected standardized "
           "difference between the groups at this site"),
    Column("vi", "Uncertainty of the site's effect", "vi: sampling variance of g "
           "(metafor vtype=\"UB\"); smaller means more precise", digits=4),
    Column("t", "t", "t statistic of diagnosis in the site's own regression"),
    Column("included", "In the pooled estimate", format="text"),
    Column("reason", "Why not", format="text"),
    Column("covariates_dropped", "Covariates left out at this site",
           "covariates constant or collinear at this site", format="text"),
)

LEAVE_ONE_OUT = (
    Column("left_out", "Site left out", "left_out: the site removed before pooling",
           format="text"),
    Column("estimate", "Pooled effect without it", "random-effects pooled Hedges' g"),
    Column("ci_low", "95 % CI low", "lower bound of the 95 % confidence interval"),
    Column("ci_high", "95 % CI high", "upper bound of the 95 % confidence interval"),
    Column("pvalue", "p", "p value of the pooled effect", format="p"),
    Column("tau2", "Between-site variance", "tau2 (τ²): variance of the true effects "
           "across sites, REML", digits=4),
    Column("q", "Heterogeneity test", "q: Cochran's Q statistic"),
    Column("i2", "Variation due to site differences (%)", "i2 (I²): share of the total "
           "variation of the site effects that is not sampling error", digits=1),
)

QC_BY_CODE = (
    SITE,
    Column("code", "Reason", "QC reason code of the site agent (sites.contract.QC_CODES)",
           format="text"),
    Column("meaning", "Meaning", format="text"),
    Column("n", "Subjects", "subjects excluded with this reason (one subject may have "
           "several reasons)", format="int"),
)

SITES_EXCLUDED = (
    SITE,
    Column("n_case", "Cases", format="int"),
    Column("n_control", "Controls", format="int"),
    Column("reason", "Why excluded", format="text"),
)

_EDGE_REGIONS_AND_T = (
    Column("roi_a", "Region A", "ROI label of the release's atlas", format="text"),
    Column("network_a", "Network A", format="text"),
    Column("roi_b", "Region B", "ROI label of the release's atlas", format="text"),
    Column("network_b", "Network B", format="text"),
    Column("t", "t", "t statistic of diagnosis in the edge's mixed model"),
)

STRONGEST_EDGES = (
    *_EDGE_REGIONS_AND_T,
    Column("d", "Effect size d", "d: Cohen's d from t, d = t (n1 + n2) / (√df √(n1 n2))"),
    Column("q", "FDR-adjusted p", "q: Benjamini-Hochberg false discovery rate over all "
           "edges", format="p"),
)

NBS_COMPONENTS = (
    Column("component", "Component", "numbered from the largest", format="int"),
    Column("direction", "Direction", "sign of t: weaker or stronger in the case group",
           format="text"),
    Column("extent", "Connections", "extent: number of edges of the connected component",
           format="int"),
    Column("n_nodes", "Regions", "number of ROIs the component joins", format="int"),
    Column("intensity", "Strength above threshold",
           "intensity: sum over its edges of |t| minus the primary threshold"),
    Column("p_extent", "Corrected p (size)",
           "family-wise error p of the extent, by permutation (max over components)",
           format="p"),
    Column("p_intensity", "Corrected p (strength)",
           "family-wise error p of the intensity, by permutation", format="p"),
    Column("networks", "Networks involved", format="text"),
)

NBS_EDGES = _EDGE_REGIONS_AND_T

NETWORK_EFFECTS = (
    Column("net_a", "Network A", format="text"),
    Column("net_b", "Network B", format="text"),
    Column("t", "t", "t statistic of diagnosis"),
    Column("d", "Effect size d", "d: Cohen's d from t"),
    Column("q", "FDR-adjusted p", "q: Benjamini-Hochberg over the network pairs", format="p"),
)

SITE_MOMENTS = (
    SITE,
    Column("n", "Subjects", format="int"),
    Column("mean_before", "Mean before", "site mean of each feature, averaged over the "
           "features, as submitted", digits=4),
    Column("mean_after", "Mean after", "the same after harmonization", digits=4),
    Column("var_before", "Variance before", "within-site variance (ddof = 1) of each "
           "feature, averaged over the features, as submitted", digits=4),
    Column("var_after", "Variance after", "the same after harmonization", digits=4),
)

#: Harmonizer names as adjectives in prose ("ComBat-harmonized").
SHORT_NAMES = {"combat": "ComBat", "combat-gam": "GAM-ComBat", "combat-ref": "reference-ComBat"}

_HARMONIZATION_WORDS = {
    "none": "no harmonization",
}


def harmonization_text(name: str | None) -> str:
    """``'ComBat: site location/scale ... (combat)'`` for a registered harmonizer name."""
    if not name:
        return "not recorded"
    try:
        from harmonization.registry import harmonizer_description

        description = harmonizer_description(name)
    except (ImportError, ValueError):
        description = _HARMONIZATION_WORDS.get(name, f"harmonizer {name!r}")
    return f"{description} ({name})"


#: Short names of the permutation schemes (``results.json``, ``permutation.scheme``).
SCHEME_DRAWS = {"signflip": "whole-site sign flips", "permute": "permutations within sites"}

_SCHEME_WORDS = {
    "signflip": "sign flips of whole sites (the model's residuals), which keep the "
    "site differences in the diagnosis effect",
    "permute": "permutations of diagnosis within site",
}


def scheme_text(scheme: str | None) -> str:
    """Plain words for a recorded permutation scheme (``results.json``, ``scheme``)."""
    return _SCHEME_WORDS.get(scheme or "permute", f"scheme {scheme!r}")
