"""Whole micrographs by class, with an honest "none of these" (Larmuseau et al., Scripta Mater. 2021):
image labels from the catalog (labels.py), a metric embedding trained on crops at many length
scales as a Ray Train job (train.py), a Gaussian mixture per class on it (openset.py), the
classifier file (classifier_file.py), image prediction from many crops (predict.py) and its
evaluation (evaluate.py)."""
