"""Coordinator models, one module per resource.

Importing this package registers every table on ``Base.metadata``; a new resource
adds its module to ``MODEL_MODULES`` below (and an Alembic revision).
"""

from consortium.db.models.audit import AuditEntry, AuditHead
from consortium.db.models.federated import FederatedRun, FederatedTask
from consortium.db.models.objects import StoredObject
from consortium.db.models.releases import Release, ReleaseSubmission
from consortium.db.models.sites import Site
from consortium.db.models.submissions import Submission, SubmissionFile, Upload
from consortium.db.models.tokens import ROLES, Token
from consortium.portal import models as _portal  # noqa: F401,E402  (portal tables)
from consortium.proposals import models as _proposals  # noqa: F401,E402  (proposal tables)

MODEL_MODULES = ["audit", "federated", "objects", "releases", "sites", "submissions", "tokens"]

__all__ = [
    "ROLES",
    "AuditEntry",
    "AuditHead",
    "FederatedRun",
    "FederatedTask",
    "Release",
    "ReleaseSubmission",
    "Site",
    "StoredObject",
    "Submission",
    "SubmissionFile",
    "Token",
    "Upload",
]
