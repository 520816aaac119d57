"""Read early-exit result files (``early_exit.py --out``): per key and batch size, the full depth, the point of the
entropy grid with the fewest mean layers that keeps >= 99 % of full-depth macro-F1 (chosen on the test labels, as
the README's tables do) with its speed-up, and the threshold training chose (``--exit-agreement``) where there is one.

    python benchmarks/serving/exit_summary.py benchmarks/results/serving/early_exit_sst2_mlp_all_idle.json
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--share", type=float, default=0.99, help="the share of full-depth macro-F1 to keep")
    a = p.parse_args()
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


if __name__ == "__main__":
    main()
