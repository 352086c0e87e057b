"""Shared fixtures: tiny models are built once per test run, offline."""
import os

# Tests never touch the network: the hub is off for every model load.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# as the CLI sets it for its users: no per-file or weight-loading bars (transformers reads it at import)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

SHARPEN = 6.0  # text q/k scale of the parity checkpoints (DESIGN §8): a random tiny model attends uniformly


def _built_once(root, sharpen: bool = False):
    """get(kind, padding_side="right") -> a tiny checkpoint under `root`, built (and sharpened) once."""
    from mmsearch import testing

    cache = {}

    def get(kind: str, padding_side: str = "right"):
        key = (kind, padding_side)
        if key not in cache:
            path = testing.build_tiny_model(kind, root / f"{kind}-{padding_side}", seed=0, padding_side=padding_side)
            cache[key] = testing.sharpen_attention(path, factor=SHARPEN) if sharpen else path
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A factory: tiny_dir(kind) -> path of a tiny checkpoint built once per session."""
    return _built_once(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir):
    """A factory: tiny_encoder(kind) -> a loaded Encoder, loaded once per session."""
    import mmsearch

    cache = {}

    def get(kind: str, padding_side: str = "right"):
        key = (kind, padding_side)
        if key not in cache:
            cache[key] = mmsearch.load_encoder(tiny_dir(kind, padding_side), device="cpu")
        return cache[key]

    return get


@pytest.fixture(scope="session")
def sharp_checkpoint(tmp_path_factory):
    """sharp_checkpoint(kind, padding_side) -> a tiny checkpoint, sharpened x6, built once."""
    return _built_once(tmp_path_factory.mktemp("sharp-models"), sharpen=True)
