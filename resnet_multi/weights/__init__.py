"""Weights and interchange: canonical state and files, kernel layouts, name maps to the frameworks' zoos."""
