"""`mmsearch serve`: its options, the bind rule, and real server processes (one and two
workers, an API key from the environment, a clean stop)."""
import pytest

from test_server_support import ServerProcess, b64_png, draw, require_server_deps, shared_index

require_server_deps()

import httpx  # noqa: E402

import mmsearch.cli as cli  # noqa: E402
from mmsearch.commands import serve  # noqa: E402
from mmsearch.server import Limits  # noqa: E402

KEY = "cli-test-key-0123456789"


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_dir):
    return shared_index(tmp_path_factory, tiny_dir)


@pytest.fixture()
def with_serve(monkeypatch):
    """cli.main with the serve command registered (whether or not cli.py lists it)."""
    if "serve" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("serve",))
    monkeypatch.delenv(serve.KEY_ENV, raising=False)
    return cli.main


def parse(*argv):
    return cli.build_parser().parse_args(["serve", *argv])


def test_options_become_limits_and_config(with_serve, index):
    args = parse(str(index), "--max-k", "7", "--timeout", "2.5", "--threads", "3", "--rerankers", "refine",
                 "--max-body-mb", "4", "--max-image-pixels", "1000000", "--verbose")
    limits = serve.limits_from(args)
    assert limits == Limits(max_k=7, search_timeout=2.5, threads=3, rerankers=("refine",), max_body_bytes=4 << 20,
                            max_image_bytes=4 << 20, max_image_pixels=1_000_000)
    config = serve.config_from(args)
    assert config.index == str(index) and config.api_key is None and config.preload
    assert "127.0.0.1" in config.allowed_hosts and "localhost" in config.allowed_hosts
    assert type(config).from_json(config.to_json()) == config
    assert serve.limits_from(parse(str(index), "--rerankers", "")).rerankers == ()


def test_refuses_to_bind_beyond_localhost_without_a_key(with_serve, index, capsys):
    assert with_serve(["serve", str(index), "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "--api-key" in err and "MMSEARCH_API_KEY" in err and "0.0.0.0" in err


@pytest.mark.parametrize("argv, message", [
    (["--api-key", "short"], "at least 16"), (["--rerankers", "magic"], "magic")])
def test_bad_options_are_errors(with_serve, index, capsys, argv, message):
    assert with_serve(["serve", str(index), *argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--port", "0"], "argument --port: expected an integer from 1 to 65535, got 0"),
    (["--workers", "0"], "argument --workers: expected an integer >= 1, got 0"),
    (["--max-k", "0"], "argument --max-k: expected an integer >= 1, got 0")])
def test_bad_numbers_are_usage_errors(with_serve, index, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        with_serve(["serve", str(index), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: mmsearch serve" in err and message in err


def test_not_an_index(with_serve, tmp_path, capsys):
    assert with_serve(["serve", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_help_lists_the_options(with_serve, capsys):
    with pytest.raises(SystemExit):
        with_serve(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--api-key", "--workers", "--device", "MMSEARCH_API_KEY", "/search"):
        assert option in out


def test_serves_with_a_key_from_the_environment(index, tmp_path):
    server = ServerProcess(index, "--no-access-log", log=tmp_path / "server.log", env={serve.KEY_ENV: KEY})
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.post("/search", json={"text": "a red circle"}).status_code == 401
            answer = c.post("/search", json={"text": "a red circle", "k": 4}, headers={"X-API-Key": KEY})
            assert answer.status_code == 200 and len(answer.json()["hits"]) == 4
            assert c.get("/info", headers={"Authorization": f"Bearer {KEY}"}).json()["auth"] is True
            assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
    finally:
        assert server.stop() in (0, -15), server.log_text()  # uvicorn re-raises SIGTERM after a clean stop


def test_two_workers_answer_alike_and_refuse_foreign_hosts(index, tmp_path):
    server = ServerProcess(index, "--workers", "2", "--threads", "1", log=tmp_path / "server.log")
    try:
        server.wait_ready(timeout=180)
        body = {"image": b64_png(draw("ring", (214, 40, 40))), "k": 5}
        with httpx.Client(base_url=server.url, timeout=60) as c:
            answers = [c.post("/search", json=body, headers={"connection": "close"}).json() for _ in range(6)]
            rebound = c.get("/info", headers={"host": "attacker.example"})
        assert all(a["hits"] == answers[0]["hits"] for a in answers) and len(answers[0]["hits"]) == 5
        assert rebound.status_code == 400 and rebound.json()["error"] == "bad_request"
    finally:
        assert server.stop() in (0, -15), server.log_text()
    assert "Started parent process" in server.log_text() or "worker" in server.log_text().lower()
