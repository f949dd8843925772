"""ROI atlases: labels, network assignment and sphere coordinates.

Three atlases are built in:

``dosenbach160``
    The 160 functional ROIs of Dosenbach et al. (2010) with the Yeo-7
    network assignment used by REST-meta-MDD [2]_ and the 33-ROI default mode
    network (``restmeta_dmn``) of Yan et al. (2019) [2]_.
``ho111``
    The 111 Harvard-Oxford ROIs of the ABIDE Preprocessed Connectomes Project
    release (C-PAC ``rois_ho``), labelled by column number as in the ``.1D``
    header (``1`` ... ``111``): no anatomical label list in the PCP order was
    found with a citable source, so none is shipped. No network assignment
    (every ROI's network is ``"unassigned"``) and no DMN: network and DMN
    analyses need an atlas TSV supplied by the consortium
    (``docs/site-data-manager/README.md``, section "Atlases").
``aal116``
    The 116 regions of the Automated Anatomical Labeling atlas [3]_, labelled
    by their AAL names (``Precentral_L`` ... ``Vermis_10``) in the order of
    the distribution's ``ROI_MNI_V4`` list (ascending grey levels 2001 ...
    9170, the column order of an extraction in ascending label order). The table
    is ``sites/data/aal116.tsv`` (with an ``aal_code`` column). No network
    assignment or DMN for AAL with a citable source is shipped: like
    ``ho111``, every ROI is ``"unassigned"`` and there is no DMN.

The AAL labels and codes were cross-checked against four public
copies: the readme of the AAL for SPM8 distribution (GIN, v1 2010-06-14,
section III.2); ``neurolabusc/MRIcron`` ``niftiview7/templates/aal.nii.txt``
(same order and codes, but it misnames 2611/2612 ``Frontal_Mid_Orb_L/R``;
the distribution and MRtrix3 name them ``Frontal_Med_Orb_L/R``);
``PennLINC/xcpEngine`` ``atlas/aal116/aal116NodeIndex.1D`` (same code
order); ``MRtrix3/mrtrix3`` ``share/mrtrix3/labelconvert/aal.txt`` (the same
116 names, in its own order).

Any other atlas is a TSV file with columns ``index, label, network`` and,
optionally, ``x, y, z`` (MNI mm) and ``dmn`` (0/1), so sites register atlases
without code changes; the atlas is named after the file stem. A bundle
carries the definition of every atlas it uses (:func:`atlas_tsv_bytes`), and
the coordinator reads atlases only from there.

References
----------
.. [1] Dosenbach N.U.F. et al. (2010). Prediction of individual brain maturity
   using fMRI. Science 329:1358-1361.
.. [2] Yan C.-G. et al. (2019). Reduced default mode network functional
   connectivity in patients with recurrent major depressive disorder. PNAS
   116:9078-9083.
.. [3] Tzourio-Mazoyer N. et al. (2002). Automated anatomical labeling of
   activations in SPM using a macroscopic anatomical parcellation of the MNI
   MRI single-subject brain. NeuroImage 15:273-289.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from sites.contract import ContractError, check_name

BUILTIN_ATLASES = ("dosenbach160", "ho111", "aal116")
#: Network of every ROI of an atlas without a network assignment.
UNASSIGNED = "unassigned"


class AtlasError(ValueError):
    """An atlas file or name that cannot be used."""


@dataclass(frozen=True, eq=False)
class Atlas:
    """A set of ROIs with one network label per ROI.

    Attributes
    ----------
    name : str
        Atlas name, used in bundle file names (``connectivity_<name>.parquet``).
    labels : list of str
        One label per ROI, in column order of the ROI time series.
    networks : list of str
        Network of each ROI (``"none"`` when the atlas has no assignment).
    coords : ndarray of shape (n_rois, 3) or None
        MNI coordinates (mm) of sphere centres, for coordinate atlases.
    dmn : ndarray of bool, shape (n_rois,) or None
        ROIs of the REST-meta-MDD default mode network.
    """

    name: str
    labels: list[str]
    networks: list[str]
    coords: np.ndarray | None = None
    dmn: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.networks):
            raise AtlasError(
                f"atlas {self.name!r}: {len(self.labels)} labels but "
                f"{len(self.networks)} network assignments"
            )
        if self.coords is not None and self.coords.shape != (self.n_rois, 3):
            raise AtlasError(f"atlas {self.name!r}: coords must be {self.n_rois} x 3")
        if self.dmn is not None and self.dmn.shape != (self.n_rois,):
            raise AtlasError(f"atlas {self.name!r}: dmn mask must have {self.n_rois} entries")

    @property
    def n_rois(self) -> int:
        return len(self.labels)

    @property
    def n_edges(self) -> int:
        return self.n_rois * (self.n_rois - 1) // 2


def load_atlas(name_or_path: str | Path) -> Atlas:
    """Load a built-in atlas by name or a custom atlas from a TSV file.

    Parameters
    ----------
    name_or_path : str or Path
        A built-in name (:data:`BUILTIN_ATLASES`: ``"dosenbach160"``,
        ``"ho111"``, ``"aal116"``) or the path of a TSV file with columns
        ``index, label, network`` (optional ``x, y, z``, ``dmn``). The atlas
        of a TSV file is named after the file stem.

    Returns
    -------
    Atlas
    """
    builtin = {"dosenbach160": _dosenbach160, "ho111": _ho111, "aal116": _aal116}
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]()
    path = Path(name_or_path)
    if not path.is_file():
        raise AtlasError(
            f"unknown atlas {str(name_or_path)!r}: not a built-in "
            f"({', '.join(BUILTIN_ATLASES)}) and no such TSV file"
        )
    return _from_tsv(path)


def _dosenbach160() -> Atlas:
    source = resources.files("sites") / "data" / "dosenbach160_networks.tsv"
    with resources.as_file(source) as path:
        table = pd.read_csv(path, sep="\t", comment="#")
    return Atlas(
        name="dosenbach160",
        labels=[f"{roi}_{name}" for roi, name in zip(table["roi"], table["name"], strict=True)],
        networks=table["yeo7_network"].astype(str).tolist(),
        coords=table[["x", "y", "z"]].to_numpy(dtype=float),
        dmn=table["restmeta_dmn"].to_numpy() == 1,
    )


def _ho111() -> Atlas:
    labels = [str(i) for i in range(1, 112)]
    return Atlas(name="ho111", labels=labels, networks=[UNASSIGNED] * 111)


def _aal116() -> Atlas:
    source = resources.files("sites") / "data" / "aal116.tsv"
    with resources.as_file(source) as path:
        table = pd.read_csv(path, sep="\t", comment="#", dtype={"label": str, "network": str})
    return atlas_from_table("aal116", table)


def _from_tsv(path: Path) -> Atlas:
    try:
        table = pd.read_csv(path, sep="\t", comment="#")
    except Exception as exc:  # pandas raises many parser errors
        raise AtlasError(f"{path}: cannot read atlas TSV ({exc})") from exc
    missing = {"index", "label", "network"} - set(table.columns)
    if missing:
        raise AtlasError(f"{path}: atlas TSV lacks column(s) {sorted(missing)}")
    if table["index"].duplicated().any():
        dup = table.loc[table["index"].duplicated(), "index"].iloc[0]
        raise AtlasError(f"{path}: duplicate ROI index {dup}")
    if table["network"].isna().any():
        row = int(table.index[table["network"].isna()][0])
        raise AtlasError(f"{path}: ROI {table.loc[row, 'index']} has no network")
    try:
        name = check_name(path.stem, f"{path}: atlas name (the file stem)")
    except ContractError as exc:
        raise AtlasError(str(exc)) from exc
    return atlas_from_table(name, table.sort_values("index"))


def atlas_from_table(name: str, table: pd.DataFrame) -> Atlas:
    """An :class:`Atlas` from a table with columns ``label, network`` (optional
    ``dmn``, ``x, y, z``), rows in ROI order.

    An all-zero ``dmn`` column means the atlas has no DMN (``dmn=None``).
    """
    coords = None
    if {"x", "y", "z"} <= set(table.columns):
        coords = table[["x", "y", "z"]].to_numpy(dtype=float)
    dmn = table["dmn"].to_numpy() == 1 if "dmn" in table.columns else None
    return Atlas(
        name=name,
        labels=table["label"].astype(str).tolist(),
        networks=table["network"].astype(str).tolist(),
        coords=coords,
        dmn=dmn if dmn is not None and dmn.any() else None,
    )


def atlas_table(atlas: Atlas) -> pd.DataFrame:
    """The atlas as the table a bundle carries: ``index, label, network, dmn[, x, y, z]``."""
    dmn = np.zeros(atlas.n_rois, int) if atlas.dmn is None else atlas.dmn.astype(int)
    table = pd.DataFrame(
        {
            "index": np.arange(1, atlas.n_rois + 1),
            "label": atlas.labels,
            "network": atlas.networks,
            "dmn": dmn,
        }
    )
    if atlas.coords is not None:
        for axis, column in enumerate(("x", "y", "z")):
            table[column] = atlas.coords[:, axis]
    return table


def atlas_tsv_bytes(atlas: Atlas) -> bytes:
    """The canonical TSV bytes of :func:`atlas_table` (UTF-8, ``\\n`` line ends).

    The same atlas always gives the same bytes, so the SHA-256 of the file
    identifies the atlas definition across sites.
    """
    table = atlas_table(atlas)
    text = table.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.6g")
    return text.encode("utf-8")


def read_atlas_tsv(data: bytes, name: str) -> pd.DataFrame:
    """Parse the bytes of a bundle's atlas table (labels kept as strings)."""
    import io

    try:
        return pd.read_csv(
            io.BytesIO(data), sep="\t", dtype={"label": str, "network": str}, keep_default_na=False
        )
    except Exception as exc:  # pandas raises many parser errors
        raise AtlasError(f"atlases/{name}.tsv: cannot read atlas table ({exc})") from exc
