"""The site–coordinator contract: every rule both sides apply, defined once.

The site agent applies these rules before it signs a bundle; the coordinator
imports this module and applies the same rules at ingest, so a value the site
accepts is never refused at ingest, and the reverse.

This module is the contract's front door: it re-exports the public names of
the modules that define the rules, so ``from sites.contract import X`` is the
one import both sides use. The rules live in:

- :mod:`sites.naming`: the naming rule for everything a manifest names (sites,
  atlases, metrics, network columns, files inside a bundle) and
  :class:`ContractError`;
- :mod:`sites.manifest_rules`: bundle paths, size limits, the manifest's file
  table and the keys and string values a manifest may carry
  (:func:`parse_manifest`, :func:`check_manifest_files`, :func:`check_manifest`);
- :mod:`sites.phenotype_rules`: the phenotype columns a bundle may carry
  (:data:`PHENOTYPE_COLUMNS`), each with its type, unit, allowed codes or
  plausible range, and whether it is required; the allow-list rule for extra
  columns (no dates, no free text, no identifying names);
  :func:`check_subjects_table`;
- :mod:`sites.qc_codes`: the QC reason codes (:data:`QC_CODES`), the layout of
  ``qc.parquet`` and ``qc_reasons.parquet`` and :func:`check_qc_tables`;
- :mod:`sites.atlas_rules`: the layout of an atlas table
  (:func:`check_atlas_table`);
- :mod:`sites.table_rules`: the column and subject-key checks every table
  shares, and :func:`check_network_table`.
"""

from __future__ import annotations

from sites.atlas_rules import ATLAS_COLUMNS, ATLAS_LABEL_RE, check_atlas_table, n_rois_of
from sites.manifest_rules import (
    BUNDLE_FOLDERS,
    MANIFEST_KEYS,
    MAX_BUNDLE_FILES,
    MAX_MANIFEST_BYTES,
    MAX_SIGNER_BYTES,
    PSEUDONYMIZATION,
    REQUIRED_FILES,
    atlas_path,
    check_bundle_path,
    check_manifest,
    check_manifest_files,
    declared_extras,
    parse_manifest,
)
from sites.naming import NAME_PATTERN, NAME_RE, ContractError, check_name
from sites.phenotype_rules import (
    CODE_RE,
    IDENTIFYING_NAME_PARTS,
    MAX_CATEGORIES,
    PHENOTYPE_COLUMNS,
    REQUIRED_COLUMNS,
    PhenotypeColumn,
    check_dx_labels,
    check_extra_column,
    check_subjects_table,
    looks_like_date,
)
from sites.qc_codes import (
    QC_CODES,
    QC_COLUMNS,
    QC_REASON_COLUMNS,
    REASON_SEPARATOR,
    QCCode,
    check_included,
    check_qc_tables,
    empty_qc_reasons,
    join_codes,
)
from sites.table_rules import SUBJECT_KEY_RE, check_network_table

__all__ = [
    "ATLAS_COLUMNS",
    "ATLAS_LABEL_RE",
    "BUNDLE_FOLDERS",
    "CODE_RE",
    "IDENTIFYING_NAME_PARTS",
    "MANIFEST_KEYS",
    "MAX_BUNDLE_FILES",
    "MAX_CATEGORIES",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNER_BYTES",
    "NAME_PATTERN",
    "NAME_RE",
    "PHENOTYPE_COLUMNS",
    "PSEUDONYMIZATION",
    "QC_CODES",
    "QC_COLUMNS",
    "QC_REASON_COLUMNS",
    "REASON_SEPARATOR",
    "REQUIRED_COLUMNS",
    "REQUIRED_FILES",
    "SUBJECT_KEY_RE",
    "ContractError",
    "PhenotypeColumn",
    "QCCode",
    "atlas_path",
    "check_atlas_table",
    "check_bundle_path",
    "check_dx_labels",
    "check_extra_column",
    "check_included",
    "check_manifest",
    "check_manifest_files",
    "check_name",
    "check_network_table",
    "check_qc_tables",
    "check_subjects_table",
    "declared_extras",
    "empty_qc_reasons",
    "join_codes",
    "looks_like_date",
    "n_rois_of",
    "parse_manifest",
]
