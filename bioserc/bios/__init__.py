"""Speaker-biography extraction: prompts in, one short character description per (conversation, speaker) out."""
