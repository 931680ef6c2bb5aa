"""Experiments built on the engine: the demo, paper configs, sweeps and reports."""
