"""sweeper: find the fastest load settings for a local LLM, per workload, overnight."""

__version__ = "0.1.0"
