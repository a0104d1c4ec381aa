"""Shared fixtures. Unit tests need no reactor; integration tests (marked) start real processes."""
