"""Builders of small models for tests and demos (need the dev extra)."""
