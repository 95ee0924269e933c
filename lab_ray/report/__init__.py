"""Run report: Markdown + HTML with PNG plots, and a dataset card."""
