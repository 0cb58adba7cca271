"""Utterance classifiers: the BERT-based BiosERC model, its batch builder and batch prediction.

Importing `BiosercBert` (or anything from `bioserc.models.bioserc_bert`) registers it with transformers' `AutoConfig`
/ `AutoModel` (model type "bioserc-bert"), so `AutoModel.from_pretrained(folder)` loads a saved classifier without
remote code. The names are resolved on first use: the ONNX runtime's modules in this package import neither torch
nor transformers, and importing the package must not either. The PyTorch batch prediction is
`bioserc.models.predict.predict` (`bioserc.models.predict` is its module).
"""

from importlib import import_module
from typing import Any


_HOMES = {
    "HEAD_BIO_MODES": "bioserc.models.bioserc_bert",
    "BiosercBert": "bioserc.models.bioserc_bert",
    "BiosercBertConfig": "bioserc.models.bioserc_bert",
    "Batch": "bioserc.models.collate",
    "Collator": "bioserc.models.collate",
    "length_sorted_batches": "bioserc.models.collate",
    "load_bios": "bioserc.models.collate",
    "missing_bios": "bioserc.models.collate",
    "Prediction": "bioserc.models.predict",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
