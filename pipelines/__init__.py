"""bioserc.pipelines (installed from the repository's pipelines/ folder).

Beam's RunInference module (`apache_beam.ml.inference.base`) imports its `model_manager` eagerly, and that imports
torch and scipy whenever torch is installed (~4 s and ~200 MB a process here) to place models on GPUs; it falls back
when the import fails and imports it again only for `use_model_manager`, which these pipelines do not use. Marking
the module absent before Beam's is imported keeps a labelling worker on ONNX Runtime free of torch (the bio steps
import torch themselves when they run an LLM). A process that imported it already keeps it.
"""

import sys


sys.modules.setdefault("apache_beam.ml.inference.model_manager", None)
