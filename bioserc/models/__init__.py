"""Utterance classifiers: the BERT-based BiosERC model, its batch builder and batch prediction."""

from bioserc.models.bioserc_bert import BIO_MODES, BiosercBert, BiosercBertConfig
from bioserc.models.collate import Batch, Collator, length_sorted_batches, load_bios, missing_bios
from bioserc.models.predict import Prediction, predict


__all__ = [
    "BIO_MODES",
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
