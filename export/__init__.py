"""bioserc.export (installed from the repository's export/ folder)."""
