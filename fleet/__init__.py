"""Code shared by the rollout and verify steps: the contract, the control-plane client, the report,
and everything the runner sees."""

# The one version: pyproject.toml reads it from here, and the HTTP client's User-Agent names it.
__version__ = "0.1.0"
