"""Training: the loops Ray Train workers run (supervised, adaptation, pre-training), the typed jobs
they receive, the table of job kinds, and hyperparameter search."""
