"""Measuring energy: the readings at a window's edges, the meter (CodeCarbon), what is attributed to
a run, the carbon intensity, the spread of repeated windows, and the outcome types of a measured run.

The lowest layer: it imports nothing of tracker's but ``tracker.errors``.
"""
