"""Federated mode, site side: messages, site statistics, policy and the polling agent.

Subject-level rows never leave the site: a task names a computation, the site runs it
on its local data and answers with a signed message of aggregates only
(:mod:`sites.federated.messages` defines and validates them). See
``docs/developer/federated-protocol.md``.
"""
