"""Shared test helpers: one definition of the server process, bundle factories and keys.

- :mod:`tests.helpers.server`: ``confed coord init`` / ``confed coord serve`` on loopback
  (:class:`~tests.helpers.server.Server`, :func:`~tests.helpers.server.serving`).
- :mod:`tests.helpers.bundles`: signed site bundles (toy, planted-effect and ABIDE recipes).
- :mod:`tests.helpers.archives`: tar archives of bundles and tampering with them.
- :mod:`tests.helpers.keys`: site key pairs and ``confed site init`` folders.
- :mod:`tests.helpers.browser`: headless chromium (command line and Playwright).

Fixtures stay in the ``conftest.py`` files; they are thin wrappers around these helpers.
"""
