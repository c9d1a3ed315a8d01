"""Compiled parts of the server: ``_frontdoor``, built from ``frontdoor.cc`` at install time."""
