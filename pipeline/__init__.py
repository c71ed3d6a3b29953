"""Refusal statistics at scale: prompts → samples → labels → validation → marts → report."""

__version__ = "0.1.0"
