"""How much is a label description worth beside 16 examples? A training-free check on the frozen backbone.

    python benchmarks/peers/description_prior.py                 # the seven 16-shot sets, seeds 13 21 42 87 100
    python benchmarks/peers/description_prior.py --only mr --weights 0 4

Nearest class centroid on the frozen default MiniLM, read as `auto` reads it (mean pooling, L2-normalised):
each class's centroid is the mean of its training texts' vectors and its description's vector counted
``w`` times, ``(sum of its n vectors + w * description) / (n + w)``; w = 0 is the prototype classifier that
`auto`'s cosine head starts from, a very large w is zero-shot with descriptions alone. Descriptions are the
set's manual prompt without the text ("It was great ."), as in the prompting benchmark. Test accuracy per
(set, seed, w) -> ``benchmarks/results/quality/description_prior.jsonl``; this is how
``--description-copies``' default of 4 was picked (see the README), before any training run with it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prompting"))

from quality import FEWSHOT, load  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "quality" / "description_prior.jsonl"
ZERO_SHOT = 1e6  # a weight at which the examples no longer count


def main() -> None:
    import torch
    import torch.nn.functional as F
    from fewshot import PROMPTS, prompt_descriptions
    from tailtune.batch import collate
    from tailtune.config import config_from_preset
    from tailtune.model import build_classifier
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--only", nargs="*", default=list(FEWSHOT))
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42, 87, 100])
    p.add_argument("--weights", nargs="*", type=float, default=[0, 1, 4, 16, ZERO_SHOT])
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    model = None

    def vectors(texts: list[str]) -> torch.Tensor:
        enc, out = model.encode(texts), []
        with torch.no_grad():
            for s in range(0, len(enc), 64):
                b = collate(enc[s:s + 64], model.tokenizer.pad_token_id, torch.device("cpu"))
                x, _ = model.readout(model.features(b["input_ids"], b["attention_mask"], b.get("token_type_ids")),
                                     b["attention_mask"], b["position"])
                out.append(F.normalize(x.float(), dim=-1))
        return torch.cat(out)

    rows = []
    for name in a.only:
        test_vectors = None
        for seed in a.seeds:
            train, _, test, length, _, _ = load(Path(a.data_dir), name, seed)
            labels = sorted(set(train.labels))
            if model is None:
                model = build_classifier(config_from_preset("auto", stages=[], max_length=length), labels, None).eval()
            model.set_max_length(length)
            if test_vectors is None:  # the test set and the descriptions do not change with the seed
                test_vectors = vectors(list(test.texts))
                gold = torch.tensor([labels.index(y) for y in test.labels])
                desc = prompt_descriptions(*PROMPTS[name], labels)
                desc_vectors = vectors([desc[y] for y in labels])
            x = vectors(list(train.texts))
            y = torch.tensor([labels.index(v) for v in train.labels])
            for w in a.weights:
                centroids = torch.stack([(x[y == c].sum(0) + w * desc_vectors[c]) / ((y == c).sum() + w)
                                         for c in range(len(labels))])
                acc = ((test_vectors @ F.normalize(centroids, dim=-1).T).argmax(-1) == gold).float().mean().item()
                rows.append({"dataset": name, "seed": seed, "weight": w, "accuracy": acc, "descriptions": desc})
                print(f"{name} seed {seed} w {w:g}: accuracy {100 * acc:.1f}", flush=True)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"-> {a.out}")
    for name in a.only:
        cells = []
        for w in a.weights:
            accs = [r["accuracy"] for r in rows if r["dataset"] == name and r["weight"] == w]
            cells.append(f"w {'∞' if w >= ZERO_SHOT else f'{w:g}'} {100 * sum(accs) / len(accs):.1f}")
        print(f"{name}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
