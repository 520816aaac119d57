"""The HTML report of an experiment: every section, one self-contained file, rendered by headless Chromium."""
import json
import re
import shutil
import subprocess

import pytest
import yaml

from tailtune.cli import main
from tailtune.experiment import load_experiment, run_experiment
from tailtune.report import SECTIONS, build_report
from test_experiment import _write_data


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def experiment(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    _write_data(tmp / "data" / "toy")
    cfg = {"backbone": tiny_bert, "data_dir": str(tmp / "data"), "output_dir": str(tmp / "out"),
           "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "eval_times": 2},
           "datasets": {"toy": {"train": "toy/train.tsv", "test": "toy/test.tsv", "theta": 0.5}},
           "runs": [{"presets": ["cls", "cls-focal"], "seeds": [1, 2]}]}
    (tmp / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = run_experiment(load_experiment(tmp / "exp.yaml"), log=lambda *_: None)
    curve = {"toy": {"curve": {"64": {"points": [{"speedup": 1.0, "macro_f1": 0.8}, {"speedup": 2.0, "macro_f1": 0.7}]}}}}
    (tmp / "curve.json").write_text(json.dumps(curve))
    return out, tmp / "curve.json"


def test_the_report_has_every_section_and_needs_no_network(experiment, tmp_path):
    out, curve = experiment
    run = out / "runs" / "toy" / "cls" / "seed1"
    assert json.loads((run / "history.json").read_text())[-1]["step"] > 0
    assert "confusions" in json.loads((run / "report.json").read_text())
    assert main(["report", str(out), "--output", str(tmp_path / "r.html"), "--curves", str(curve)]) == 0
    page = (tmp_path / "r.html").read_text()
    for section in SECTIONS:
        body = page.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert "not recorded" not in body, section  # these runs recorded everything
    assert page.count("data:image/png;base64,") == 4  # per-class, weight norms, curves, speed/quality figures
    assert "cls-focal" in page and "± " in page
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', page)  # nothing to fetch
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # written atomically, no temporary file left


def test_a_directory_without_results_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_the_report_renders_in_headless_chromium(experiment, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here (.ci/run installs Debian's chromium)")
    out, curve = experiment
    page = tmp_path / "report.html"
    page.write_text(build_report(out, [curve]))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a drawn page, not a blank one
