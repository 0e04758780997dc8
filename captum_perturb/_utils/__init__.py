"""Helpers every room of the package uses; no imports from the rest of it."""
