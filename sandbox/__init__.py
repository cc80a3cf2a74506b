"""A simulated control plane and tenant fleet that speak the contract on loopback.

``Sandbox`` serves a scenario (``sandbox/scenarios/*.yml`` or any YAML file of the same shape):
tenants that are healthy, wedged, slow, stale, flapping or unreachable after a redeploy, and a
control plane that can be made to fail. ``python -m sandbox --scenario incident`` runs one.
"""

from .scenario import BEHAVIOURS, FAULTS, PRESETS_DIR, load_scenario, preset_names, sha_for_tag
from .server import Sandbox

__all__ = ["BEHAVIOURS", "FAULTS", "PRESETS_DIR", "Sandbox", "load_scenario", "preset_names", "sha_for_tag"]
