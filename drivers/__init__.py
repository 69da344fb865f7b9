"""Device drivers: one sub-package per device kind, real and sim drivers behind one Protocol."""
