"""tailtune serve: concurrent mixed-task requests, the same scores as predict, clear 4xx errors, loopback."""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
import tailtune as tt  # noqa: E402
from tailtune.serve.app import ServeConfig, create_app  # noqa: E402
from tailtune.serve.client import Client, ServerError  # noqa: E402
from tiny import perturbed_module  # noqa: E402

TEXTS = ["the movie was great", "bad food", "oil price news", "who is it", "a good game", "the market price"]


@pytest.fixture(scope="module")
def served(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    perturbed_module("adapter", tiny_bert, root / "topic", labels=("news", "sports", "money"), seed=1)
    perturbed_module("lora", tiny_bert, root / "mood", labels=("good", "bad"), seed=2)
    perturbed_module("cls", tiny_bert, root / "full", labels=("x", "y", "z", "w"), seed=3)  # a full model
    perturbed_module("prefix", tiny_bert, root / "spare", labels=("p", "q"), seed=4)
    port = _free_port()
    import uvicorn
    cfg = ServeConfig(port=port, token="s3cret", max_batch=16, max_wait_ms=20, max_texts=8, max_chars=200)
    app = create_app(str(root), cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield root, Client(f"http://127.0.0.1:{port}", token="s3cret"), app
    server.should_exit = True
    thread.join(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_concurrent_mixed_task_requests_equal_predict(served, capsys):
    root, client, app = served
    calls = [(["topic", "mood", "full"][i % 3], TEXTS[i % 6:] + TEXTS[:i % 6][:1 + i % 3]) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: client.predict(*c), calls))
    for (task, texts), answer in zip(calls, answers):
        from tailtune.cli import main  # the command line's predict, on the same directory
        args = [str(root), *texts, "--task", task] if task != "full" else [str(root / "full"), *texts]
        assert main(["predict", *args]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [a["label"] for a in answer] == [r["label"] for r in rows]
        np.testing.assert_allclose([a["score"] for a in answer], [r["score"] for r in rows], atol=1e-5)
        assert all(abs(sum(a["probabilities"].values()) - 1) < 1e-5 for a in answer)
    metrics = json.dumps(client._call("GET", "/health"))
    assert '"tasks": 4' in metrics
    data, _ = app.state.metrics.render()
    text = data.decode()
    assert 'tailtune_requests_total{status="200",task="topic"}' in text
    batches = app.state.metrics.batch_requests.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < 24  # concurrent requests shared model calls


def test_bad_requests_get_4xx_with_a_message(served):
    root, client, _ = served
    url = client.url
    cases = [
        ("POST", "/v1/nope/predict", {"texts": ["x"]}, 404, "unknown task 'nope'"),
        ("POST", "/v1/topic/predict", {"texts": []}, 422, "non-empty list of strings"),
        ("POST", "/v1/topic/predict", {"texts": [1, 2]}, 422, "non-empty list of strings"),
        ("POST", "/v1/topic/predict", {"text": ["x"]}, 422, "unknown field(s) ['text']"),
        ("POST", "/v1/topic/predict", {"texts": ["x"] * 9}, 413, "the limit is 8"),
        ("POST", "/v1/topic/predict", {"texts": ["x" * 201]}, 413, "more than 200 characters"),
        ("POST", "/v1/topic/predict", {"texts": ["x"], "texts_b": ["a", "b"]}, 422, "texts_b must be"),
        ("DELETE", "/v1/tasks/nope", None, 404, "unknown task"),
    ]
    for method, path, payload, status, message in cases:
        with pytest.raises(ServerError, match=f"{status} .*{message.replace('(', '.').replace(')', '.').replace('[', '.').replace(']', '.')}"):
            client._call(method, path, payload)
    import urllib.error
    import urllib.request
    bad = urllib.request.Request(url + "/v1/topic/predict", data=b"{not json", method="POST",
                                 headers={"Authorization": "Bearer s3cret"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad)
    assert e.value.code == 400 and "not JSON" in json.loads(e.value.read())["error"]
    with pytest.raises(ServerError, match="401 missing or wrong bearer token"):
        Client(url).predict("topic", ["x"])
    assert Client(url).health()["status"] == "ok"  # health needs no token


def test_tasks_are_added_and_removed_without_a_restart(served):
    root, client, _ = served
    assert {t["name"] for t in client.tasks()} == {"topic", "mood", "full", "spare"}
    client.remove("spare")
    with pytest.raises(ServerError, match="404 unknown task 'spare'"):
        client.predict("spare", ["x"])
    info = client.add("spare")
    assert info["labels"] == ["p", "q"] and info["shares_backbone"]
    assert client.predict("spare", ["x"])[0]["label"] in ("p", "q")
    with pytest.raises(ServerError, match="409 .*already served"):
        client.add("spare")


def test_a_task_trained_on_text_pairs_says_so_when_sent_single_texts(served, tiny_bert):
    import warnings
    root, client, _ = served
    model = perturbed_module("prefix", tiny_bert, root / "pairs", labels=("p", "q"), seed=5)
    tt.save_classifier(model, root / "pairs", {"text_pairs": True}, overwrite=True)  # as fit(X, y, X_b) saves it
    assert client.add("pairs")["text_pairs"]
    assert not next(t for t in client.tasks() if t["name"] == "mood")["text_pairs"]
    try:
        with pytest.warns(UserWarning, match="task 'pairs' was trained on pairs of texts, but these come without"):
            assert client.predict("pairs", ["oil price"])[0]["label"] in ("p", "q")  # answered, with a warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client.predict("pairs", ["oil price"], ["price"])
            client.predict("mood", ["a good game"])
    finally:
        client.remove("pairs")


def test_the_default_bind_address_is_loopback():
    from tailtune.cli import build_parser
    assert ServeConfig().host == "127.0.0.1"
    args = build_parser().parse_args(["serve", "somewhere"])
    assert args.host is None  # unset: ServeConfig's loopback default applies
    with pytest.raises(tt.ConfigError, match="max_batch=0"):
        ServeConfig(max_batch=0)
    # the flags parse to ServeConfig's types (its module keeps real annotations for FastAPI)
    args = build_parser().parse_args(["serve", "d", "--port", "8123", "--max-wait-ms", "2.5", "--early-exit",
                                      "--token", "none"])
    assert (args.port, args.max_wait_ms, args.early_exit, args.token) == (8123, 2.5, True, None)


def test_precisions_of_prediction(tiny_bert, toy, tmp_path):
    import torch

    from tailtune.device import fastest_precision, resolve_precision
    texts, labels = toy
    clf = tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(epochs=2, progress=False)).fit(texts, labels)
    clf.save(tmp_path / "m")
    fp32 = tt.TailtuneClassifier.load(tmp_path / "m", "cpu").decision_function(texts)
    for precision, atol in (("bf16", 0.1), ("int8", 0.15)):
        other = tt.TailtuneClassifier.load(tmp_path / "m", "cpu").set_precision(precision).decision_function(texts)
        np.testing.assert_allclose(other, fp32, atol=atol)
    q = tt.TailtuneClassifier.load(tmp_path / "m", "cpu").set_precision("int8").model_
    qlinear = [m for m in q.modules() if type(m).__name__ == "Linear" and hasattr(m, "weight") and callable(m.weight)]
    assert qlinear and not any(isinstance(m, torch.nn.Linear) for m in q.modules())  # every linear layer int8
    assert {m.weight().qscheme() for m in qlinear} == {torch.per_channel_affine}  # one scale per output channel
    assert resolve_precision("auto", "cpu") == fastest_precision("cpu") in ("fp32", "bf16")
    assert tt.TrainConfig(precision="auto").bf16 == (fastest_precision("cpu") == "bf16")
    with pytest.raises(tt.ConfigError, match="for prediction only"):
        tt.TrainConfig(precision="int8")
    from tailtune.multitask import TaskSet
    perturbed_module("lora", tiny_bert, tmp_path / "lo")
    lora = tt.TailtuneClassifier.load(tmp_path / "lo", "cpu").decision_function(texts)
    alone = tt.TailtuneClassifier.load(tmp_path / "lo", "cpu").set_precision("int8")  # on its own, LoRA is folded in
    np.testing.assert_allclose(alone.decision_function(texts), lora, atol=0.3)
    assert not any("lora_" in n for n, _ in alone.model_.named_modules())
    with pytest.raises(tt.ConfigError, match="set to int8"):
        alone.save(tmp_path / "q")
    assert not (tmp_path / "q").exists()
    with pytest.raises(tt.ConfigError, match="int8 quantisation replaces"):
        TaskSet(precision="int8").add(tmp_path / "lo")
    perturbed_module("adapter", tiny_bert, tmp_path / "ad")
    int8 = TaskSet(precision="int8")
    int8.add(tmp_path / "ad")
    ref = TaskSet()
    ref.add(tmp_path / "ad")
    for a, b in zip(int8.logits(texts[:4], ["ad"] * 4), ref.logits(texts[:4], ["ad"] * 4)):
        torch.testing.assert_close(a, b, atol=0.15, rtol=0.1)


def test_max_length_reaches_every_served_task_and_predict_on_a_directory(tiny_bert, tmp_path, capsys):
    """`serve --max-length` / `predict DIR --max-length`: task modules and full models alike read more of a text."""
    from tailtune.cli import main
    from tailtune.serve.host import ModelHost
    root = tmp_path / "served"
    perturbed_module("adapter", tiny_bert, root / "topic", labels=("news", "sports", "money"), seed=1, max_length=8)
    perturbed_module("cls", tiny_bert, root / "full", labels=("x", "y"), seed=3, max_length=8)
    long = " ".join(TEXTS)  # longer than 8 tokens
    trained, longer = ModelHost(root), ModelHost(root, max_length=64)
    trained.load_all(), longer.load_all()
    for task in ("topic", "full"):
        assert (trained.info[task]["max_length"], longer.info[task]["max_length"]) == (8, 64)
        assert not np.allclose(trained.predict([long], [task])[0], longer.predict([long], [task])[0], atol=1e-4)
        assert np.allclose(trained.predict(TEXTS[:1], [task])[0], longer.predict(TEXTS[:1], [task])[0], atol=1e-6)
    assert main(["predict", str(root), long, "--task", "topic", "--max-length", "64"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["score"] == pytest.approx(float(longer.predict([long], ["topic"])[0].max()), abs=1e-5)
    # more than the backbone can read: refused with the limit, before the port opens
    assert main(["serve", str(root), "--max-length", "1000", "--port", str(_free_port())]) == 2
    assert "--max-length 128 or less" in capsys.readouterr().err
    with pytest.raises(tt.ConfigError, match="8 or more"):
        ServeConfig(max_length=4)


def test_serve_refuses_a_port_in_use_before_loading(tiny_bert, tmp_path, capsys):
    from tailtune.cli import main
    perturbed_module("adapter", tiny_bert, tmp_path / "topic", seed=1)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port N" in err


def test_the_listening_socket_holds_its_port_from_the_check_on():
    from tailtune.serve.app import listen_socket
    sock = listen_socket("127.0.0.1", 0)  # what serve binds before the classifiers load
    port = sock.getsockname()[1]
    with _reusing_socket() as other, pytest.raises(OSError):  # nobody else's, even with SO_REUSEADDR
        other.bind(("127.0.0.1", port))
    sock.close()
    with _reusing_socket() as other:
        other.bind(("127.0.0.1", port))


def test_serve_command_on_any_free_port_holds_it_and_stops_on_a_signal(tiny_bert, tmp_path):
    """`tailtune serve --port 0` prints the port it got once its classifiers have loaded, keeps it while it runs,
    and finishes on SIGINT (exit 130, as any interrupted command) and SIGTERM (uvicorn re-raises it after its
    graceful shutdown)."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request
    perturbed_module("adapter", tiny_bert, tmp_path / "topic", labels=("news", "sports", "money"), seed=1)
    code = "import sys; from tailtune.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(tmp_path), "--port", "0"], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        watchdog = threading.Timer(180, proc.kill)  # a server that never prints fails the test, not the suite
        watchdog.start()
        try:
            line = proc.stdout.readline()  # printed once every classifier has loaded
            assert line.startswith(f"serving {tmp_path} on http://127.0.0.1:"), (line, proc.stderr.read())
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
            assert port > 0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
                assert json.loads(r.read()) == {"status": "ok", "tasks": 1}
            with _reusing_socket() as other, pytest.raises(OSError):  # the port stays the server's
                other.bind(("127.0.0.1", port))
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            watchdog.cancel()
            proc.kill()
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
    with _reusing_socket() as other:  # released on exit (closed connections may sit in TIME_WAIT, as uvicorn allows)
        other.bind(("127.0.0.1", port))


def _reusing_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s
