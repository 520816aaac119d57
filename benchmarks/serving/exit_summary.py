"""Read early-exit result files (``early_exit.py --out``): per key and batch size, the full depth, the point of the
entropy grid with the fewest mean layers that keeps >= 99 % of full-depth macro-F1 (chosen on the test labels, as
the README's tables do) with its speed-up, and the threshold training chose (``--exit-agreement``) where there is one;
with ``--common``, per setting (keys without their ``/seedN``) one threshold for every seed: the mean share and
speed-up over the seeds at each threshold whose mean share is >= 99 %.

    python benchmarks/serving/exit_summary.py benchmarks/results/serving/early_exit_sst2_mlp_all_idle.json
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--share", type=float, default=0.99, help="the share of full-depth macro-F1 to keep")
    p.add_argument("--common", action="store_true", help="one threshold for every seed of a setting: mean over seeds")
    a = p.parse_args()
    if a.common:
        return common(a.files, a.share)
    for path in a.files:
        for key, row in json.load(open(path)).items():
            for batch, curve in row["curve"].items():
                kept = [q for q in curve["points"] if q["rule"] == "entropy" and (q["f1_share"] or 0) >= a.share]
                best = min(kept, key=lambda q: q["mean_layers"])
                line = (f"{key} batch {batch}: full depth {100 * curve['full_depth_macro_f1']:.1f} in "
                        f"{curve['full_depth_seconds']:.2f} s; fewest layers at >= {100 * a.share:g} %: "
                        f"{best['mean_layers']:.2f} (threshold {best['relative_threshold']} of ln(classes), "
                        f"{100 * best['f1_share']:.1f} %, {best['speedup']:.2f}x)")
                chosen = curve.get("chosen")
                if chosen:
                    line += (f"; chosen by training: {chosen['relative_threshold']:.2f} -> {chosen['mean_layers']:.2f} "
                             f"layers, {100 * chosen['f1_share']:.1f} %, {chosen['speedup']:.2f}x")
                print(line)


def common(files: list[str], share: float) -> None:
    groups: dict = defaultdict(lambda: defaultdict(list))  # (setting, batch) -> threshold -> points over seeds
    for path in files:
        for key, row in json.load(open(path)).items():
            for batch, curve in row["curve"].items():
                for q in curve["points"]:
                    if q["rule"] == "entropy":
                        groups[(re.sub(r"/seed\d+", "", key), batch)][q["relative_threshold"]].append(q)
    for (setting, batch), by_threshold in groups.items():
        seeds = max(len(points) for points in by_threshold.values())
        for threshold, points in sorted(by_threshold.items()):
            mean_share = sum(q["f1_share"] for q in points) / len(points)
            if len(points) == seeds and mean_share >= share:
                print(f"{setting} batch {batch}, {seeds} seeds, threshold {threshold} of ln(classes): mean "
                      f"{100 * mean_share:.2f} % of full depth (lowest seed {100 * min(q['f1_share'] for q in points):.1f} "
                      f"%), {sum(q['mean_layers'] for q in points) / seeds:.2f} layers, "
                      f"{sum(q['speedup'] for q in points) / seeds:.2f}x")


if __name__ == "__main__":
    main()
