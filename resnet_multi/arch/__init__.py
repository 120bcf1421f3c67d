"""The architecture: the spec, its resolved plan, the presets, and the analytic layer table."""
