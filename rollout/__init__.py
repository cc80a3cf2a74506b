"""The rollout step: plan, drive the control plane canary-first and batch by batch, and judge coverage
against the straggler budget."""
