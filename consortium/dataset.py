"""A data release as one analysable table: subjects, connectivity, maps, QC.

A :class:`Dataset` joins the verified bundles of a release (one per site) into
subject-aligned views. Every view keeps the same subject order: sites sorted by
site id, then each bundle's own row order. Voxel maps are exposed as a dask
array whose blocks are read from the bundles' files only when computed, so a
voxel-wise analysis can stream a release that does not fit in memory.

See ``docs/developer/contracts.md`` for the names other packages rely on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd

from sites.bundle import BundleError
from sites.contract import empty_qc_reasons

__all__ = ["Dataset", "DatasetError"]


class DatasetError(ValueError):
    """The bundles of a release cannot be combined; the message names the site."""


class Dataset:
    """Subjects and derived data of several site bundles, aligned by subject.

    Parameters
    ----------
    bundles : sequence of sites.bundle.Bundle
        Verified bundles, at most one per site.
    release_name, release_hash : str or None
        Provenance of the release the bundles come from.

    Attributes
    ----------
    subjects : pandas.DataFrame
        Canonical phenotype columns plus ``site``, one row per included subject.
    qc : pandas.DataFrame
        All sites' QC tables (``subject_key``, ``included``, ``reason_codes``,
        ``mean_fd``) plus ``site``.
    qc_reasons : pandas.DataFrame
        All sites' exclusion reasons (``subject_key``, ``code``, ``field``,
        ``value``, ``threshold``; codes of :data:`sites.contract.QC_CODES`) plus ``site``.
    dx_labels : dict
        ``{"case": ..., "control": ...}`` shared by all bundles.
    sites : list of str
        Site ids, sorted; the order of the rows.
    """

    def __init__(
        self,
        bundles: Sequence[Any],
        release_name: str | None = None,
        release_hash: str | None = None,
    ) -> None:
        if len(bundles) == 0:
            raise DatasetError("a dataset needs at least one bundle")
        self._bundles = sorted(bundles, key=lambda b: b.site_id)
        self.release_name = release_name
        self.release_hash = release_hash
        self.sites = [b.site_id for b in self._bundles]
        _check_unique_sites(self.sites)
        self.dx_labels = _common_dx_labels(self._bundles)
        self.subjects = _concat_subjects(self._bundles)
        self.qc = _concat_qc(self._bundles)
        self.qc_reasons = _concat_qc_reasons(self._bundles)
        self._counts = [len(b.subjects) for b in self._bundles]

    @classmethod
    def from_bundles(
        cls,
        bundles: Sequence[Any],
        release_name: str | None = None,
        release_hash: str | None = None,
    ) -> Dataset:
        """Build a dataset from verified bundles (``sites.bundle.read_bundle``)."""
        return cls(bundles, release_name=release_name, release_hash=release_hash)

    @property
    def bundle_hashes(self) -> dict[str, str]:
        """Site id -> bundle hash, for provenance."""
        return {b.site_id: b.bundle_hash for b in self._bundles}

    @property
    def n_subjects(self) -> int:
        return int(sum(self._counts))

    @property
    def atlases(self) -> list[str]:
        """Atlas names present in every bundle's manifest."""
        common: set[str] | None = None
        for bundle in self._bundles:
            names = set(_manifest_atlases(bundle))
            common = names if common is None else common & names
        return sorted(common or ())

    def atlas_hashes(self, atlas: str) -> dict[str, str | None]:
        """Site id -> SHA-256 of the definition of ``atlas`` its bundle carries (None: none)."""
        return {b.site_id: _atlas_sha256(b, atlas) for b in self._bundles}

    def atlas(self, name: str):
        """The definition of atlas ``name`` the release's bundles carry.

        Returns
        -------
        sites.atlas.Atlas

        Raises
        ------
        DatasetError
            A bundle has no such atlas or no definition of it, or two sites'
            definitions differ (naming both sites and hashes).
        """
        name = self.resolve_atlas(name)
        hashes = self.atlas_hashes(name)
        _check_same_atlas(name, hashes)
        bundle = self._bundles[0]
        try:
            return bundle.atlas(name)
        except (BundleError, AttributeError, ValueError) as exc:
            raise DatasetError(f"site {bundle.site_id!r}: atlas {name!r}: {exc}") from exc

    def resolve_atlas(self, name: str | None) -> str:
        """The atlas an analysis uses: ``name``, or the release's only atlas.

        A path (``atlases/aal116.tsv``) names the atlas of its stem (``aal116``).
        """
        names = self.atlases
        if name is None or name == "":
            if len(names) != 1:
                raise DatasetError(
                    f"the release holds the atlases {names}; name one with --atlas"
                    if names
                    else "the release holds no connectivity atlas"
                )
            return names[0]
        if ("/" in name or name.endswith(".tsv")) and name not in names:
            name = PurePath(name).stem
        if name not in names:
            raise DatasetError(f"unknown atlas {name!r}: the release holds the atlases {names}")
        return name

    @property
    def map_names(self) -> list[str]:
        """Map metrics present in every bundle."""
        common: set[str] | None = None
        for bundle in self._bundles:
            names = set(bundle.map_names)
            common = names if common is None else common & names
        return sorted(common or ())

    def connectivity(self, atlas: str) -> np.ndarray:
        """Subjects x edges float32 Fisher-z connectivity for ``atlas``."""
        _check_same_atlas(atlas, self.atlas_hashes(atlas), require=False)
        blocks = []
        n_edges = None
        first = None
        for bundle in self._bundles:
            try:
                block = np.asarray(bundle.connectivity(atlas), dtype=np.float32)
            except (BundleError, KeyError, FileNotFoundError) as exc:
                raise DatasetError(
                    f"site {bundle.site_id!r}: no connectivity for atlas {atlas!r} ({exc})"
                ) from exc
            _check_rows(bundle, block.shape[0], f"connectivity_{atlas}")
            if n_edges is None:
                n_edges, first = block.shape[1], bundle.site_id
            elif block.shape[1] != n_edges:
                raise DatasetError(
                    f"site {bundle.site_id!r}: atlas {atlas!r} has {block.shape[1]} edges, "
                    f"site {first!r} has {n_edges}"
                )
            blocks.append(block)
        return np.concatenate(blocks, axis=0)

    def network_summaries(self, atlas: str) -> pd.DataFrame:
        """Subjects x network-pair means, index aligned with :attr:`subjects`."""
        _check_same_atlas(atlas, self.atlas_hashes(atlas), require=False)
        frames = []
        columns = None
        first = None
        for bundle in self._bundles:
            try:
                frame = bundle.network_summaries(atlas)
            except (BundleError, KeyError, FileNotFoundError) as exc:
                raise DatasetError(
                    f"site {bundle.site_id!r}: no network summaries for atlas {atlas!r} ({exc})"
                ) from exc
            _check_rows(bundle, len(frame), f"network summaries of {atlas}")
            if columns is None:
                columns, first = list(frame.columns), bundle.site_id
            elif sorted(frame.columns) != sorted(columns):
                missing = sorted(set(columns) ^ set(frame.columns))
                raise DatasetError(
                    f"site {bundle.site_id!r}: network summary columns for {atlas!r} differ "
                    f"from site {first!r}: {missing[:5]}"
                )
            frames.append(frame[columns].reset_index(drop=True))
        out = pd.concat(frames, ignore_index=True)
        out.index = self.subjects.index
        return out

    def maps(self, metric: str, chunk_voxels: int | None = None):
        """Mask image and a lazy subjects x voxels dask array of ``metric``.

        Parameters
        ----------
        metric : str
            Map name, e.g. ``"alff"``.
        chunk_voxels : int or None
            Re-chunk the voxel axis to this size (rows stay one block per site).

        Returns
        -------
        mask : nibabel.Nifti1Image
            The common mask; all bundles must share it exactly.
        data : dask.array.Array
            float32, row order of :attr:`subjects`; each site's block is read from
            its bundle only when computed.
        """
        mask_img, n_voxels = self._common_mask(metric)
        step = n_voxels if chunk_voxels is None else max(1, int(chunk_voxels))
        rows = []
        for bundle, n_rows in zip(self._bundles, self._counts, strict=True):
            row = []
            for start in range(0, n_voxels, step):
                stop = min(start + step, n_voxels)
                delayed = dask.delayed(_read_map_block)(
                    bundle, metric, n_rows, n_voxels, start, stop
                )
                row.append(da.from_delayed(delayed, shape=(n_rows, stop - start), dtype=np.float32))
            rows.append(row)
        return mask_img, da.block(rows)

    def _common_mask(self, metric: str):
        import nibabel as nib

        reference = None
        for bundle in self._bundles:
            if metric not in bundle.map_names:
                raise DatasetError(
                    f"site {bundle.site_id!r}: no map {metric!r} (has {bundle.map_names})"
                )
            img = _mask_image(bundle, metric)
            mask = np.asarray(img.dataobj) != 0
            if reference is None:
                reference = (bundle.site_id, img, mask)
                continue
            site0, img0, mask0 = reference
            if mask.shape != mask0.shape or not np.allclose(img.affine, img0.affine):
                raise DatasetError(
                    f"site {bundle.site_id!r}: mask of map {metric!r} has shape {mask.shape} "
                    f"and a different grid from site {site0!r} {mask0.shape}"
                )
            if not np.array_equal(mask, mask0):
                n_diff = int((mask != mask0).sum())
                raise DatasetError(
                    f"site {bundle.site_id!r}: mask of map {metric!r} differs from site "
                    f"{site0!r} in {n_diff} voxels"
                )
        _, img0, mask0 = reference
        out = nib.Nifti1Image(mask0.astype(np.uint8), img0.affine)
        return out, int(mask0.sum())


def _manifest_atlases(bundle: Any) -> list[str]:
    if hasattr(bundle, "atlases"):
        return list(bundle.atlases)
    atlases = bundle.manifest.get("atlases", [])
    if isinstance(atlases, dict):
        return list(atlases)
    return [a["name"] if isinstance(a, dict) else str(a) for a in atlases]


def _atlas_sha256(bundle: Any, atlas: str) -> str | None:
    reader = getattr(bundle, "atlas_sha256", None)
    return reader(atlas) if callable(reader) else None


def _check_same_atlas(name: str, hashes: dict[str, str | None], require: bool = True) -> None:
    """All sites carry the same definition of atlas ``name`` (``require``: every site has one)."""
    missing = [site for site, digest in hashes.items() if digest is None]
    if missing and require:
        raise DatasetError(
            f"site {missing[0]!r}: the bundle carries no definition of atlas {name!r} "
            "(made by an older site agent; the site must recompute and resubmit)"
        )
    hashes = {site: digest for site, digest in hashes.items() if digest is not None}
    if not hashes:
        return
    first_site, first = next(iter(hashes.items()))
    for site, digest in hashes.items():
        if digest != first:
            raise DatasetError(
                f"atlas {name!r} differs between sites: site {first_site!r} has definition "
                f"{first} and site {site!r} has {digest}; every site must use the same "
                "atlas TSV"
            )


def _check_unique_sites(sites: list[str]) -> None:
    seen = set()
    for site in sites:
        if site in seen:
            raise DatasetError(f"site {site!r} appears in more than one bundle")
        seen.add(site)


def _common_dx_labels(bundles: Sequence[Any]) -> dict[str, str]:
    reference = None
    for bundle in bundles:
        labels = bundle.manifest.get("dx_labels")
        if not isinstance(labels, dict) or not {"case", "control"} <= set(labels):
            raise DatasetError(
                f"site {bundle.site_id!r}: manifest has no dx_labels with case and control"
            )
        labels = {"case": str(labels["case"]), "control": str(labels["control"])}
        if reference is None:
            reference = (bundle.site_id, labels)
        elif labels != reference[1]:
            raise DatasetError(
                f"site {bundle.site_id!r}: dx_labels {labels} differ from site "
                f"{reference[0]!r} {reference[1]}"
            )
    return reference[1]


def _concat_subjects(bundles: Sequence[Any]) -> pd.DataFrame:
    frames = []
    for bundle in bundles:
        frame = bundle.subjects.reset_index(drop=True).copy()
        if "subject_key" not in frame.columns:
            raise DatasetError(f"site {bundle.site_id!r}: subjects table has no subject_key")
        frame.insert(0, "site", bundle.site_id)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    dup = out["subject_key"].duplicated(keep=False)
    if dup.any():
        rows = out.loc[dup, ["site", "subject_key"]].head(4)
        listed = ", ".join(f"{s}:{k[:12]}" for s, k in rows.itertuples(index=False))
        raise DatasetError(f"subject keys appear more than once: {listed}")
    return out


def _concat_qc(bundles: Sequence[Any]) -> pd.DataFrame:
    frames = []
    for bundle in bundles:
        frame = bundle.qc.reset_index(drop=True).copy()
        frame.insert(0, "site", bundle.site_id)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _concat_qc_reasons(bundles: Sequence[Any]) -> pd.DataFrame:
    frames = []
    for bundle in bundles:
        frame = getattr(bundle, "qc_reasons", empty_qc_reasons()).reset_index(drop=True).copy()
        frame.insert(0, "site", pd.Series([bundle.site_id] * len(frame), dtype=object))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _check_rows(bundle: Any, n_rows: int, what: str) -> None:
    expected = len(bundle.subjects)
    if n_rows != expected:
        raise DatasetError(
            f"site {bundle.site_id!r}: {what} has {n_rows} rows but the subjects table "
            f"has {expected}"
        )


def _mask_image(bundle: Any, metric: str):
    """The mask image of ``metric`` without reading the subject data if possible."""
    reader = getattr(bundle, "map_mask", None)
    if callable(reader):
        return reader(metric)
    return bundle.maps(metric)[0]


def _read_map_block(
    bundle: Any, metric: str, n_rows: int, n_voxels: int, start: int, stop: int
) -> np.ndarray:
    """Voxels ``start:stop`` of one site's map; only those columns are read if possible."""
    reader = getattr(bundle, "map_columns", None)
    if callable(reader) and (start, stop) != (0, n_voxels):
        values = np.asarray(reader(metric, start, stop), dtype=np.float32)
        expected = (n_rows, stop - start)
    else:
        values = np.asarray(bundle.maps(metric)[1], dtype=np.float32)
        expected = (n_rows, n_voxels)
    if values.shape != expected:
        raise DatasetError(
            f"site {bundle.site_id!r}: map {metric!r} has shape {values.shape}, expected {expected}"
        )
    return values if expected[1] == stop - start else values[:, start:stop]
