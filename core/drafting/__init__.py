"""Drafting arithmetic and measurements: per-depth acceptance rates (`rates`) and the measured
draft costs cached per file, machine and placement (`costs`)."""
