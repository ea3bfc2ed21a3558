"""Studies: the paper's protocols, the optimisation-dynamics tools, and the statistics and figures they report."""
