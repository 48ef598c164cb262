"""The self-configuring training plan: a fingerprint of the data, and the settings derived from it."""
