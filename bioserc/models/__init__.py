"""Utterance classifiers: the BERT-based BiosERC model, its batch builder and batch prediction.

Importing this package registers `BiosercBert` with transformers' `AutoConfig` / `AutoModel` (model type
"bioserc-bert"), so `AutoModel.from_pretrained(folder)` loads a saved classifier without remote code.
"""

from bioserc.models.bioserc_bert import HEAD_BIO_MODES, BiosercBert, BiosercBertConfig
from bioserc.models.collate import Batch, Collator, length_sorted_batches, load_bios, missing_bios
from bioserc.models.predict import Prediction, predict


__all__ = [
    "HEAD_BIO_MODES",
    "Batch",
    "BiosercBert",
    "BiosercBertConfig",
    "Collator",
    "Prediction",
    "length_sorted_batches",
    "load_bios",
    "missing_bios",
    "predict",
]
