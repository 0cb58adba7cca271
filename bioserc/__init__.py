"""bioserc: emotion recognition in conversation with LLM-written speaker biographies (BiosERC)."""

__version__ = "0.1.0"
