"""`train(settings)`: contrastive training of a VLM2Vec encoder (the recipe of
VLM2Vec: InfoNCE over in-batch negatives plus hard negatives, LoRA or full
fine-tuning, GradCache), with mined hard negatives and exact resumption; or, with
objective "generate", next-token prediction of the positive's text given the
query (see `generate`), e.g. a reading stage before contrastive training.

One optimizer step = `grad_accum` batches of `batch_size` queries (each
contrastive batch its own softmax), gradients summed over them (scaled by
1/grad_accum), clipped, then AdamW with warmup and cosine/linear/constant decay.
Everything random is seeded: the data order and negative draws by `seed` and
the step, dropout by the torch RNG (saved in checkpoints); the caller's global
RNG state (and torch's thread count, which `threads` may set) is restored when
`train` returns.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .._version import __version__
from ..errors import InputError
from . import checkpoint as ckpt
from .batches import BatchBuilder, DataOrder, ImageCache
from .data import read_train_data
from .distill import Distiller
from .generate import generation_backward, generation_data
from .gradcache import contrastive_backward
from .loss import Temperature, false_negative_mask, matryoshka_info_nce
from .mining import Miner
from .model import autocast_for, build_model, parameter_groups, starting_checkpoint
from .schedule import lr_lambda
from .settings import TrainSettings

log = logging.getLogger("mmsearch.train")
LOG_FILE = "train_log.jsonl"
ERRORS_FILE = "train_errors.jsonl"


@dataclass(frozen=True)
class TrainResult:
    out: str
    steps: int
    examples: int
    skipped: int
    final_loss: Optional[float]
    temperature: float
    seconds: float
    sequences_per_second: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def train(settings: TrainSettings) -> TrainResult:
    """Train as `settings` say; write the model (and logs, checkpoints) to `settings.out`."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    threads = torch.get_num_threads()
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(settings.seed)
            return Trainer(settings).run()
    finally:
        torch.set_num_threads(threads)


class Trainer:
    """The training loop. `train()` is the entry point (it seeds and restores the RNG);
    build a Trainer directly to keep the trained encoder (`.encoder`) after `run()`."""

    def __init__(self, settings: TrainSettings):
        s = self.settings = settings
        self.out = Path(s.out)
        self.out.mkdir(parents=True, exist_ok=True)
        state = self._resume_state()
        self.data = self._read_data()
        self._write_rejections()
        self.model = build_model(s, starting_checkpoint(s, self.out, self._vocab_texts, resuming=state is not None))
        self.encoder = self.model.encoder
        self.temperature = Temperature(s.temperature, s.learn_temperature).to(self.encoder.device)
        self.order = DataOrder(len(self.data.examples), s.batch_size, s.seed,
                               [ex.dataset for ex in self.data.examples] if s.per_dataset_batches else None)
        self.total = s.max_steps or max(1, math.ceil(s.epochs * self.order.per_epoch / s.grad_accum))
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, self.temperature, s.weight_decay),
                                           lr=s.learning_rate)
        warmup = s.warmup if s.warmup >= 1 else s.warmup * self.total
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(s.schedule, warmup, self.total))
        self.miner = (Miner.create(s.mining, self.data.examples, self.data.candidates(), self.out / "mining")
                      if s.mining else None)
        self.builder = BatchBuilder(self.data.examples, ImageCache(s.image_cache_mb << 20, s.max_image_pixels),
                                    s.data_negatives, self.miner.sample if self.miner else None)
        self.autocast = autocast_for(self.encoder.device, s.precision)
        self.distiller = None
        if s.distill_from:
            self.distiller = Distiller.create(s.distill_from, s.distill_weight, s.distill_data, self.data.examples,
                                              self.encoder, s.chunk_size, self.autocast)
            log.info("distilling %.0f%% of the examples from %s (weight %g)", 100 * self.distiller.fraction,
                     s.distill_from, s.distill_weight)
        self.step, self.last_loss, self.sequences = 0, None, 0
        if state is not None:
            self._restore(state)

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        s, start = self.settings, time.perf_counter()
        log.info("training on %d examples (%d skipped), %d steps of %d x %d queries, %d trainable parameters",
                 len(self.data.examples), sum(self.data.skipped.values()), self.total, s.grad_accum, s.batch_size,
                 sum(p.numel() for p in self.model.trainable().values()))
        bar = tqdm(total=self.total, initial=self.step, unit="step", desc="train", disable=not s.show_progress,
                   dynamic_ncols=True)
        window = _Window()
        while self.step < self.total:
            self._maybe_mine()
            t0 = time.perf_counter()
            loss, seqs = self.train_step()
            window.add(loss, seqs, time.perf_counter() - t0)
            bar.update(1)
            if self.step % s.log_every == 0 or self.step == self.total:
                record = self._log(window.flush())
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if s.save_every and (self.step % s.save_every == 0 or self.step == self.total):
                ckpt.save_checkpoint(self.out, self.step, self.state(), s.keep_checkpoints)
        bar.close()
        return self._finish(time.perf_counter() - start)

    def train_step(self):
        """One optimizer step; returns (mean loss of its batches, sequences embedded)."""
        s = self.settings
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, seqs = [], 0
        for a in range(s.grad_accum):
            m = self.step * s.grad_accum + a
            batch = self.builder.build(self.order.batch(m)[1], np.random.default_rng([s.seed, 1, m]))
            if len(batch.queries) < 2:
                log.warning("step %d: batch %d has fewer than 2 usable examples; skipped", self.step, m)
                continue
            if s.objective == "generate":
                losses.append(generation_backward(self.encoder, batch.queries, [p.text for p in batch.positives],
                                                  s.chunk_size, 1.0 / s.grad_accum, self.autocast))
                seqs += len(batch.queries)
            else:
                losses.append(self._contrastive_backward(batch))
                seqs += len(batch.queries) + len(batch.candidates)
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params(), s.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.sequences += seqs
        self.last_loss = float(np.mean(losses)) if losses else None
        return self.last_loss, seqs

    def _contrastive_backward(self, batch) -> float:
        s = self.settings
        mask = false_negative_mask(batch.positives, batch.candidate_keys)
        targets = self.distiller.targets(batch) if self.distiller is not None else None

        def loss_fn(q, c):
            loss = matryoshka_info_nce(q, c, self.temperature.scale(), s.matryoshka, mask)
            return loss if targets is None else loss + self.distiller.loss(q, c, targets)

        return float(contrastive_backward(self.encoder, batch.queries, batch.candidates, loss_fn, s.chunk_size,
                                          1.0 / s.grad_accum, self.autocast))

    def _read_data(self):
        s = self.settings
        if s.objective == "generate":  # hard negatives play no part in generation
            return generation_data(read_train_data(s.data, s.image_root, negatives=False))
        return read_train_data(s.data, s.image_root, s.data_negatives)

    def _vocab_texts(self) -> Iterator[str]:
        """The scratch tokenizer's corpus: the training texts, then `vocab_data`'s."""
        yield from self.data.texts()
        if self.settings.vocab_data:
            yield from read_train_data(self.settings.vocab_data, self.settings.image_root).texts()

    def _params(self):
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _maybe_mine(self) -> None:
        if self.miner is None or not self.miner.due(self.step):
            return
        self.model.eval()
        with torch.no_grad():
            record = self.miner.refresh(self.encoder, self.builder.request, self.step)
        self.model.train()
        log.info("mined hard negatives at step %d: %.1f per query from a pool of %d (%.1f s)", self.step,
                 record["negatives_per_query"], record["pool"], record["seconds"])
        self._append_log(record)

    # --- logs --------------------------------------------------------------------------

    def _log(self, window: dict) -> dict:
        record = {"step": self.step, "epoch": round(self.step * self.settings.grad_accum / self.order.per_epoch, 4),
                  "loss": window["loss"], "lr": self.scheduler.get_last_lr()[0],
                  "temperature": round(self.temperature.value, 6), "seq_per_s": window["seq_per_s"]}
        if self.distiller is not None:
            record["distill"] = self.distiller.flush()  # the part of `loss` that is distillation
        log.info("step %d/%d loss %.4f lr %.3g temperature %.4f %.1f seq/s", self.step, self.total, record["loss"],
                 record["lr"], record["temperature"], record["seq_per_s"])
        self._append_log(record)
        return record

    def _append_log(self, record: dict) -> None:
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _write_rejections(self) -> None:
        path = self.out / ERRORS_FILE
        if self.data.rejected:
            log.warning("skipped %d training rows: %s (listed in %s)", len(self.data.rejected),
                        dict(self.data.skipped), path)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.data.rejected), encoding="utf-8")
        elif path.exists():
            path.unlink()

    # --- checkpoints -------------------------------------------------------------------

    def _resume_state(self) -> Optional[dict]:
        found = ckpt.latest_checkpoint(self.out)
        if not self.settings.resume:
            if found is not None:
                raise InputError(f"{self.out} holds checkpoints of an earlier run ({found.name}); pass --resume "
                                 f"(resume=True) to continue it, or choose another output directory")
            (self.out / LOG_FILE).unlink(missing_ok=True)
            return None
        if found is None:
            log.info("no checkpoint in %s; starting a new run", self.out)
            (self.out / LOG_FILE).unlink(missing_ok=True)
            return None
        log.info("resuming from %s", found)
        return ckpt.load_checkpoint(found)

    def _run_facts(self) -> dict:
        s = self.settings
        facts = {"examples": len(self.data.examples), "batch_size": s.batch_size, "grad_accum": s.grad_accum,
                 "seed": s.seed, "lora": s.lora is not None, "objective": s.objective}
        if s.distill_from:
            facts["distill"] = [s.distill_from, s.distill_weight, list(s.distill_data)]
        return facts

    def state(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.encoder.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        miner = None
        if self.miner is not None and self.miner.table is not None:
            miner = {"table": torch.from_numpy(self.miner.table), "mined_at": self.miner.mined_at}
        return {"step": self.step, "run": self._run_facts(), "rng": rng, "miner": miner,
                "trainable": {n: p.detach().cpu() for n, p in self.model.trainable().items()},
                "temperature": self.temperature.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sequences": self.sequences}

    def _restore(self, state: dict) -> None:
        saved = {"objective": "contrastive", **state["run"]}  # checkpoints from before objectives were contrastive
        if saved != self._run_facts():
            raise InputError(f"cannot resume: the checkpoint's run {saved} differs from this one "
                             f"{self._run_facts()}; use the same data and settings")
        params = self.model.trainable()
        missing = sorted(set(params) ^ set(state["trainable"]))
        if missing:
            raise InputError(f"cannot resume: trainable weights differ from the checkpoint's ({missing[:3]} ...)")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["trainable"][name])
        self.temperature.load_state_dict(state["temperature"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.encoder.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        if self.miner is not None and state["miner"] is not None:
            self.miner.load_state({"table": state["miner"]["table"].numpy(), "mined_at": state["miner"]["mined_at"]})
        self.step, self.sequences = state["step"], state["sequences"]
        _truncate_log(self.out / LOG_FILE, self.step)

    # --- the end -----------------------------------------------------------------------

    def _finish(self, seconds: float) -> TrainResult:
        s = self.settings
        self.model.eval()  # the encoder is ready for inference (dropout off)
        result = TrainResult(out=str(self.out), steps=self.step, examples=len(self.data.examples),
                             skipped=sum(self.data.skipped.values()), final_loss=self.last_loss,
                             temperature=self.temperature.value, seconds=round(seconds, 3),
                             sequences_per_second=round(_rate(self.out / LOG_FILE), 1))
        base = ckpt.base_reference(self.model.base) if s.save_adapter else None
        card = {"mmsearch_version": __version__, "base_model": s.model or "scratch", "result": result.to_dict(),
                "settings": dataclasses.asdict(s), "skipped_rows": dict(self.data.skipped)}
        ckpt.export_model(self.model, self.out, s.save_adapter, base, card, matryoshka=s.matryoshka)
        log.info("saved the trained model to %s (%d steps, %.0f s)", self.out, self.step, seconds)
        return result


class _Window:
    """Loss and throughput since the last log line."""

    def __init__(self):
        self.losses, self.seqs, self.seconds = [], 0, 0.0

    def add(self, loss: Optional[float], seqs: int, seconds: float) -> None:
        if loss is not None:
            self.losses.append(loss)
        self.seqs += seqs
        self.seconds += seconds

    def flush(self) -> dict:
        out = {"loss": float(np.mean(self.losses)) if self.losses else float("nan"),
               "seq_per_s": round(self.seqs / self.seconds, 2) if self.seconds else 0.0}
        self.__init__()
        return out


def _truncate_log(path: Path, step: int) -> None:
    """Keep what was logged before the checkpoint of `step` was written: step records
    up to `step`, mining records before it (a resumed run writes the rest again)."""
    if not path.is_file():
        return
    records = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [r for r in records if r["step"] < step or (r["step"] == step and r.get("event") != "mine")]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def _rate(log_path: Path) -> float:
    """Mean sequences/s over the logged training windows."""
    if not log_path.is_file():
        return 0.0
    rates = [r["seq_per_s"] for r in map(json.loads, log_path.read_text().splitlines()) if "seq_per_s" in r]
    return float(np.mean(rates)) if rates else 0.0
