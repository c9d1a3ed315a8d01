"""Kept only for tests/conftest.py, which imports CLASS_NAMES from here: delete this file once
it imports them from common.contract, where the class names live now."""

from common.contract import CLASS_NAMES

__all__ = ["CLASS_NAMES"]
