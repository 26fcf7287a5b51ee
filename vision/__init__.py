"""Pixels → evidence → score. A library: no database, no HTTP, no training code."""
