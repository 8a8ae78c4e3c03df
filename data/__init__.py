"""Bundled data: the Qwythos-9B config, a calibration text, the trained tiny model."""
