"""LM Station: a desktop app with an embedded LLM inference engine."""

__version__ = "0.1.0"
