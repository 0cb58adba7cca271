"""Call-centre analytics over labelled utterances: valence, per-call and per-role trajectories, escalations, and the
archive summary (pure Python, no Beam: the pipelines wrap it)."""
