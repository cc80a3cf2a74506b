"""The verify step: poll every tenant that was not quarantined until it serves the target build healthy,
or the deadline passes, and give each a verdict."""
