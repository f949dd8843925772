"""The simulated design: REST-meta-MDD per-site, per-group facts and subjects drawn from them.

Part of :mod:`consortium.simulate`: :func:`summarize_design` makes the shipped
facts (``consortium/data/restmeta_sites.csv``) from the published design,
:func:`load_site_facts` reads them, and :func:`draw_group` draws one group's
subjects (age, sex, education, mean FD).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from consortium.simulate.model import SimulationError

FACTS_FILE = "restmeta_sites.csv"


def summarize_design(path: str | Path) -> pd.DataFrame:
    """Summarize a subject-level REST-meta-MDD design into per-site, per-group facts.

    Parameters
    ----------
    path : str or Path
        CSV with columns ``SubID, Site, Dx, Age, Sex, Edu, Motion`` (``Dx``:
        1 MDD, -1 control; ``Sex``: 1 male, 2 female), as
        ``design_848MDD_794NC.csv`` from the authors' public scripts.

    Returns
    -------
    DataFrame
        One row per site and group (``MDD``, ``HC``): ``n``, ``age_mean``,
        ``age_sd``, ``age_min``, ``age_max``, ``female_prop``, ``edu_mean``,
        ``edu_sd``, ``edu_min``, ``edu_max``, ``motion_mean``, ``motion_sd``.
    """
    design = pd.read_csv(path)
    missing = {"Site", "Dx", "Age", "Sex", "Edu", "Motion"} - set(design.columns)
    if missing:
        raise SimulationError(f"{path}: design lacks column(s) {sorted(missing)}")
    design["group"] = design["Dx"].map({1: "MDD", -1: "HC"})
    if design["group"].isna().any():
        raise SimulationError(f"{path}: column Dx must be 1 (MDD) or -1 (control)")
    rows = []
    for (site, group), sub in design.groupby(["Site", "group"], sort=True):
        rows.append(
            {
                "site": int(site),
                "group": group,
                "n": len(sub),
                "age_mean": sub["Age"].mean(),
                "age_sd": sub["Age"].std(),
                "age_min": sub["Age"].min(),
                "age_max": sub["Age"].max(),
                "female_prop": (sub["Sex"] == 2).mean(),
                "edu_mean": sub["Edu"].mean(),
                "edu_sd": sub["Edu"].std(),
                "edu_min": sub["Edu"].min(),
                "edu_max": sub["Edu"].max(),
                "motion_mean": sub["Motion"].mean(),
                "motion_sd": sub["Motion"].std(),
            }
        )
    facts = pd.DataFrame(rows)
    facts["group"] = pd.Categorical(facts["group"], ["MDD", "HC"])
    return facts.sort_values(["site", "group"]).reset_index(drop=True).astype({"group": str})


def load_site_facts() -> pd.DataFrame:
    """The per-site, per-group facts of the REST-meta-MDD design shipped with confed."""
    source = resources.files("consortium") / "data" / FACTS_FILE
    with resources.as_file(source) as path:
        return pd.read_csv(path, comment="#")


def draw_group(rng: np.random.Generator, row: pd.Series, n: int, site_id: str) -> pd.DataFrame:
    """Draw ``n`` subjects of one site and group (a row of the facts)."""
    age = np.clip(
        rng.normal(row["age_mean"], max(row["age_sd"], 1.0), n), row["age_min"], row["age_max"]
    )
    edu = np.clip(
        np.round(rng.normal(row["edu_mean"], max(row["edu_sd"], 0.5), n)),
        row["edu_min"],
        row["edu_max"],
    )
    mean, sd = row["motion_mean"], row["motion_sd"]
    s2 = np.log1p((sd / mean) ** 2)
    fd = rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), n)
    female = rng.random(n) < row["female_prop"]
    return pd.DataFrame(
        {
            "site_id": site_id,
            "dx": row["group"],
            "age": np.round(age, 1),
            "sex": np.where(female, "F", "M"),
            "education_years": edu,
            "mean_fd": np.round(fd, 5),
        }
    )
