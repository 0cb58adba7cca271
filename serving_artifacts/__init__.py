"""Models installed with bioserc (`bioserc.serving_artifacts`): data only, found with `importlib.resources`.

`default/` is the classifier `bioserc label` and `bioserc evaluate` use without `--model`; see
`bioserc.artifacts.default_model_dir`.
"""
