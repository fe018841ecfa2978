"""The training loop, its stopping rules and resume state, and the run that ties config to run directory."""
