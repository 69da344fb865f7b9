"""Device drivers: one sub-package per device kind, each a real and a sim driver behind a Protocol."""
