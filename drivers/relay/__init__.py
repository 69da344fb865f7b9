"""Contactor relays."""
