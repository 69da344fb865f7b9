"""Plug (vehicle connected) sensors."""
