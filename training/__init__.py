"""bioserc.training (installed from the repository's training/ folder)."""
