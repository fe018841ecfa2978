"""solve-equations: the solver on gradfit's optimizers, equation files, and what the solution says."""
