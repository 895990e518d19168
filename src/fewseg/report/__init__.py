"""Plots, overlays and the demo report."""
