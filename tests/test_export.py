"""ONNX export and ONNX Runtime inference give PyTorch's scores; the runtime needs no PyTorch."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import tailtune as tt  # noqa: E402
from tailtune.cli import main  # noqa: E402
from tailtune.deploy import OnnxClassifier  # noqa: E402

TEXTS = ["the movie was great", "bad food", "oil price news today", "who is it", "a good game and a bad film"]


@pytest.mark.parametrize("preset,options", [("cls", {}), ("auto", {}), ("prompt", {}), ("adapter", {}),
                                            ("soft-prompt", {"soft_tokens": 2}),
                                            ("auto", {"memory_weight": 0.5})])  # (a memory kept, whatever dev says)
def test_onnx_runtime_gives_the_same_scores(preset, options, tiny_bert, toy, tmp_path, capsys):
    texts, labels = toy
    clf = tt.TailtuneClassifier(preset, tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False, seed=1),
                                **options).fit(texts, labels)
    clf.save(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--output", str(tmp_path / "onnx")]) == 0
    assert "largest score difference" in capsys.readouterr().out
    onnx = OnnxClassifier(tmp_path / "onnx")
    np.testing.assert_allclose(onnx.decision_function(TEXTS), clf.decision_function(TEXTS), atol=1e-4, rtol=1e-4)
    assert onnx.predict(TEXTS) == clf.predict(TEXTS)


@pytest.mark.parametrize("trains", ["all", "adapter", "lora", "prefix", "prompt"])
def test_early_exit_through_onnx_runtime_leaves_where_pytorch_does(trains, tiny_bert, toy, tmp_path, capsys):
    """model.onnx answers at full depth; exits/ runs layer by layer with the same rule, so every row leaves at the
    same layer with the same scores as `tailtune predict --early-exit`; with every task-module kind."""
    texts, labels = toy
    extra = {"input_format": "template", "soft_tokens": 2, "template": "{text} it is {mask} ."} \
        if trains == "prompt" else {}
    clf = tt.TailtuneClassifier("pabee", tiny_bert, train_config=tt.TrainConfig(epochs=2, progress=False, seed=1),
                                trains=trains, **extra).fit(texts, labels)
    clf.save(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--output", str(tmp_path / "onnx")]) == 0
    assert "exits/ holds the embeddings and each of the 2 layers" in capsys.readouterr().out
    onnx, ours = OnnxClassifier(tmp_path / "onnx"), tt.TailtuneClassifier.load(tmp_path / "m")
    probe = TEXTS * 3 + texts
    np.testing.assert_allclose(onnx.decision_function(probe), ours.decision_function(probe), atol=1e-4, rtol=1e-4)
    assert onnx.layers_used_ is None
    early = False
    for rule, threshold, patience in [("normalized-entropy", 0.9, None), ("confidence", 0.4, None),
                                      ("patience", None, 1), ("entropy", 0.0, None)]:
        ours.set_early_exit(rule, threshold, patience)
        onnx.set_early_exit(rule, threshold, patience)
        np.testing.assert_allclose(onnx.decision_function(probe, batch_size=7), ours.decision_function(probe),
                                   atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(onnx.layers_used_, ours.layers_used_.numpy())
        if rule == "entropy":  # threshold 0: no row leaves early, the full depth's scores
            assert (onnx.layers_used_ == 2).all()
        early |= bool((onnx.layers_used_ == 1).any())
    assert early  # some rule let rows leave after the first layer: the loop's row bookkeeping was exercised
    with pytest.raises(tt.errors.ConfigError, match="rule='often' is not one of"):
        onnx.set_early_exit("often")


def test_early_exit_needs_exits_in_the_export(tiny_bert, toy, tmp_path):
    texts, labels = toy
    tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False)).fit(
        texts, labels).save(tmp_path / "m")
    from tailtune.export import export_onnx
    export_onnx(tmp_path / "m", tmp_path / "onnx")
    with pytest.raises(tt.errors.ConfigError, match="has no exit classifiers: export a classifier trained with"):
        OnnxClassifier(tmp_path / "onnx").set_early_exit()
    from tailtune import deploy
    from tailtune.heads.early_exit import EXIT_RULES
    assert deploy.EXIT_RULES == EXIT_RULES  # the runtime's copy (it imports no torch) names the same rules


@pytest.mark.parametrize("preset,options", [("lora", {}), ("prefix", {}), ("prefix", {"prefix_reparam": 8})])
def test_lora_and_prefixes_export_with_the_same_scores(preset, options, tiny_bert, tmp_path):
    """LoRA is folded into the weights it adapts (W + (α/r)·B·A) and prefixes enter the traced attention, so the
    graph holds plain layers; the batch size stays dynamic (5 texts here, 2 in the trace)."""
    from tiny import perturbed_module
    from tailtune.export import export_onnx
    perturbed_module(preset, tiny_bert, tmp_path / "m", **options)  # (no task module is the identity)
    before = {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    export_onnx(tmp_path / "m", tmp_path / "onnx")
    ours = tt.TailtuneClassifier.load(tmp_path / "m")
    onnx = OnnxClassifier(tmp_path / "onnx")
    np.testing.assert_allclose(onnx.decision_function(TEXTS), ours.decision_function(TEXTS), atol=1e-4, rtol=1e-4)
    assert {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()} == before  # the saved classifier is untouched


def test_the_runtime_imports_without_pytorch(tiny_bert, toy, tmp_path):
    texts, labels = toy
    tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False)).fit(
        texts, labels).save(tmp_path / "m")
    from tailtune.export import export_onnx
    export_onnx(tmp_path / "m", tmp_path / "onnx")
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch fails
            "from tailtune.deploy import OnnxClassifier\n"
            f"print(OnnxClassifier({str(tmp_path / 'onnx')!r}).predict(['the movie was great']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("['")
