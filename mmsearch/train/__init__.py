"""Contrastive training of VLM2Vec encoders (the `train` extra).

    from mmsearch.train import LoraSettings, TrainSettings, train
    result = train(TrainSettings(data=["train.jsonl"], model="BASE", out="run", lora=LoraSettings()))
    encoder = mmsearch.load_encoder("run")

Modules: `data` (MMEB-train tables), `batches` (data order, batches), `loss`
(InfoNCE, temperature), `gradcache`, `model` (the trainable encoder), `mining`
(hard negatives from an index), `checkpoint` (resume, export), `init` (random and
from-scratch starting checkpoints), `trainer` (the loop).
"""
from .settings import LoraSettings, MiningSettings, ScratchSettings, TrainSettings


def __getattr__(name: str):
    """The trainer (torch) loads on first use: the CLI reads the settings' defaults without it."""
    if name in ("TrainResult", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'mmsearch.train' has no attribute {name!r}")


__all__ = ["LoraSettings", "MiningSettings", "ScratchSettings", "TrainResult", "TrainSettings", "train"]
