"""Control pilot (IEC 61851-1): the offered current and the vehicle's state A-F."""
