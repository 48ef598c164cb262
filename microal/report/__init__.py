"""Self-contained HTML reports: one file per training run and per active-learning project."""
