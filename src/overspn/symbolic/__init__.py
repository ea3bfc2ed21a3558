"""Symbolic structures: nodes, scopes, validation and structure-to-structure transforms. Never imports torch."""
