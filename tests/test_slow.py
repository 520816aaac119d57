"""Real-model checks on the embedded all-MiniLM-L6-v2 (run with: pytest -m slow)."""
import pytest

import tailtune as tt

pytestmark = pytest.mark.slow


def test_demo_learns_on_the_default_backbone(tmp_path):
    from tailtune.demo import run_demo
    report = run_demo(tmp_path / "demo")
    assert report["accuracy"] > 0.8
    loaded = tt.TailtuneClassifier.load(tmp_path / "demo" / "model", device="cpu")
    assert loaded.predict(["please reset my password"]) == ["account"]


def test_default_backbone_has_no_mlm_head_and_says_so():
    with pytest.warns(UserWarning, match="no pretrained MLM head"):
        tt.build_classifier(tt.config_from_preset("prompt"), ["sports", "business"])
