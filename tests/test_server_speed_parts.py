"""The parts the server's speed rests on: orjson and the standard library give the same
JSON answers (and refuse the same bodies), the Server-Timing stopwatch adds up, and
search threads get their share of torch's threads and give it back."""
import json
import math
import threading
from functools import partial

import pytest

from test_server_support import require_server_deps

require_server_deps()

from mmsearch.server import fastjson  # noqa: E402
from mmsearch.server.batching import Batcher, SearchArgs  # noqa: E402
from mmsearch.server.cores import torch_threads, torch_threads_per_search, use_torch_threads  # noqa: E402
from mmsearch.server.schemas import SearchRequest, json_safe  # noqa: E402
from mmsearch.server.timing import Stopwatch  # noqa: E402
from mmsearch.types import Query  # noqa: E402

VALID = [b'{"text": "caf\\u00e9 \xc3\xa9 \\ud83d\\ude00", "k": 5}', b"[1, 2.5, -3e-7, true, null]", b'"x"',
         b'{"filter": {"year": {"gte": 2000}, "a": [[[[1]]]]}, "params": {"nprobe": 8}}', b"12345678901234"]
INVALID = [b"{", b'{"text": "x",}', b'{"text": "\\ud800"}', b'{"k": NaN}', b'{"k": -Infinity}', b'{"x": 1e400}', b'{"text": "\xff\xfe"}',
           b"[" * 100_000 + b"]" * 100_000, b"{'a': 1}"]


@pytest.fixture(params=["orjson", "stdlib"])
def backend(request, monkeypatch):
    if request.param == "orjson":
        if fastjson.orjson is None:
            pytest.skip("orjson is not installed")
    else:
        monkeypatch.setattr(fastjson, "orjson", None)
    return request.param


@pytest.mark.parametrize("body", VALID)
def test_loads_agrees_with_the_standard_library(backend, body):
    assert fastjson.loads(body) == json.loads(body)


@pytest.mark.parametrize("body", INVALID)
def test_loads_refuses_what_the_api_refuses(backend, body):
    with pytest.raises(fastjson.JSONError):
        fastjson.loads(body)


def test_dumps_round_trips_json_safe_values(backend):
    value = json_safe({"id": "café/1", "score": 0.123456789, "nan": math.nan, "n": [1, None, True],
                       "nested": {"x": -1.5e-12, 3: "three"}})
    out = fastjson.dumps(value)
    assert isinstance(out, bytes) and json.loads(out) == value and b" " not in out.replace(b"caf", b"")


def test_stopwatch_stages_add_up_to_the_total():
    watch = Stopwatch()
    watch.lap("parse", at=watch.start + 0.001)
    watch.lap("wait", at=watch.start + 0.004)
    watch.lap("engine", at=watch.start + 0.010)
    watch.batch = 3
    assert watch.header() == "parse;dur=1.000, wait;dur=3.000, engine;dur=6.000, total;dur=10.000, batch;desc=3"


@pytest.mark.parametrize("threads, cores, share", [(1, 1, 1), (2, 2, 1), (1, 2, 2), (3, 2, 1), (2, 8, 4), (3, 8, 2)])
def test_torch_share(threads, cores, share):
    assert torch_threads_per_search(threads, cores) == share
    assert threads * share <= max(cores, threads)


def test_search_threads_run_with_their_share_and_give_it_back():
    pytest.importorskip("torch")
    before = torch_threads()
    seen = []

    def run(args, queries):
        seen.append(torch_threads())
        return [q.text for q in queries]

    share = 1 if before > 1 else 2  # a value different from the current one
    batcher = Batcher(run, threads=2, max_batch=4, initializer=partial(use_torch_threads, share))
    try:
        assert batcher.submit(SearchArgs.of(SearchRequest(text="x")), Query(text="x")).result(10) == "x"
    finally:
        batcher.close()
        use_torch_threads(before)
    assert seen == [share]
    later = []
    thread = threading.Thread(target=lambda: later.append(torch_threads()))
    thread.start()
    thread.join()
    assert later == [before] and torch_threads() == before
