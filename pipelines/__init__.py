"""bioserc.pipelines (installed from the repository's pipelines/ folder)."""
