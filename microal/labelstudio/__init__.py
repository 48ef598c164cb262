"""Experts in Label Studio: the labelling config, the local server, the SDK client (the one SDK
importer), consolidating annotators, and the push / pull loop."""
