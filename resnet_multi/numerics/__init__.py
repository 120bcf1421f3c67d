"""Numerics checks: the float64 NumPy reference, layer-by-layer parity, training parity."""
