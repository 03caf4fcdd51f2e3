"""ml-collections experiment configs: every experiment is one of these files plus overrides."""
