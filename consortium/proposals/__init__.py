"""Proposal-based data access (issue 7).

A researcher proposes a study; the steering committee reviews it; sites whose data
is requested may opt out; approval creates a grant scoped to measures, phenotype
columns, sites and one release. The grant's holder then exports exactly that data,
with pseudonyms re-keyed per proposal, or runs aggregate-only remote analyses under
disclosure control. Modules: :mod:`.models`, :mod:`.lifecycle`, :mod:`.review`,
:mod:`.consent`, :mod:`.grants`, :mod:`.export`, :mod:`.remote`, :mod:`.disclosure`.
"""
