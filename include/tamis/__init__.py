"""tamis: turns raw text sources into training-ready LLM data."""

__version__ = "0.1.0"
