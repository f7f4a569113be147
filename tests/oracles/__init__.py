"""External oracles for dev-only tests: other projects' own code, imported from a local checkout.

Each oracle module has a `missing_reason()` (None when the oracle can be used, else why not and how to get
it); tests call `pytest.skip(reason)` with it. None of them is installed from a registry, so CI, which has
only Python and PyPI, skips those tests and says why.
"""
