"""Station displays."""
