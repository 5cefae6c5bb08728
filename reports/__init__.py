"""Figures, multi-seed comparisons and one-file HTML/Markdown reports of simulations and tuning studies."""
