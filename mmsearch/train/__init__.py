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
from .trainer import TrainResult, train

__all__ = ["LoraSettings", "MiningSettings", "ScratchSettings", "TrainResult", "TrainSettings", "train"]
