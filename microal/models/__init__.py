"""Models: the smp model factory, the model file (the one owner of saved models), per-domain
batch-norm statistics, and the metrics models are judged by."""
