"""Code shared by the rollout and verify steps: the contract, the control-plane client, the report,
and everything the runner sees."""
