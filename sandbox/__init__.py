"""A simulated control plane, tenant fleet and forge API that speak the contract on loopback.

``Sandbox`` serves a scenario (``sandbox/scenarios/*.yml`` or any YAML file of the same shape): tenants
that are healthy, wedged, slow, stale, flapping, unreachable or stopped, a control plane with the one
redeploy-fleet endpoint that can be made to fail, and the GitHub/Gitea API a rollout uses (branch head,
Actions variables, and an issue tracker with labels, comments and pull requests). Behaviours, the head,
variables and the issue tracker's faults can be changed while it runs.
``python -m sandbox --scenario incident`` runs one.
"""

from .scenario import BEHAVIOURS, FAULT_TARGETS, FAULTS, PRESETS_DIR, load_scenario, preset_names, sha_for_tag
from .server import HTML_ERROR_PAGE, Sandbox

__all__ = [
    "BEHAVIOURS",
    "FAULTS",
    "FAULT_TARGETS",
    "HTML_ERROR_PAGE",
    "PRESETS_DIR",
    "Sandbox",
    "load_scenario",
    "preset_names",
    "sha_for_tag",
]
