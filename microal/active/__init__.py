"""Active learning: acquisition heuristics, ensembles, scoring, selection, the pool, a project's
rounds, and the oracle simulation."""
