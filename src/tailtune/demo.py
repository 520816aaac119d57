"""``tailtune demo``: the main job end to end on small, long-tailed demo data written for tailtune.

The data are customer-support messages composed from hand-written phrases (no third-party
text): 8 intents whose training counts fall from 60 to 3, i.e. a long tail. The test split is
long-tailed too (a quarter of each class's training count, at least 2) and is built from a
phrase per intent that training never sees.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

# intent -> (train count, phrases a message is composed from)
INTENTS: dict[str, tuple[int, list[str]]] = {
    "billing": (60, ["I was charged twice this month", "my invoice shows the wrong amount",
                     "why is my bill higher than usual", "please refund the extra charge on my card",
                     "the payment went through but the invoice says unpaid", "I need a copy of last month's bill"]),
    "shipping": (40, ["my parcel has not arrived yet", "the tracking number does not work",
                      "when will my order be delivered", "the courier left the package at the wrong address",
                      "can you ship to another country", "delivery is two weeks late"]),
    "returns": (25, ["I want to send this item back", "how do I return a product that does not fit",
                     "the return label is missing from the box", "can I exchange the shoes for a bigger size",
                     "I returned the jacket but got no refund yet"]),
    "account": (15, ["I cannot log in to my account", "please reset my password",
                     "how do I change the email on my profile", "my account was locked after three tries",
                     "I want to delete my account"]),
    "warranty": (8, ["the blender broke after two months, is it under warranty",
                     "does the guarantee cover a cracked screen", "how long is the warranty on this laptop",
                     "the repair should be free under the guarantee"]),
    "gift_card": (5, ["my gift card code is not accepted", "how do I check the balance of a gift card",
                      "can I buy a voucher for a friend", "the voucher expired before I used it"]),
    "accessibility": (4, ["the website does not work with my screen reader",
                          "please make the checkout usable with a keyboard only",
                          "the text is too small and cannot be enlarged"]),
    "privacy": (3, ["what personal data do you store about me", "please stop sharing my data with partners",
                    "I want a copy of all the data you hold on me"]),
}
OPENERS = ["", "Hello, ", "Hi team, ", "Good morning. ", "Excuse me, ", "Quick question: "]
CLOSERS = ["", " Thanks.", " Thank you!", " Please help.", " This is urgent.", " Regards, Sam."]


def make_demo_data(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) rows of (message, intent). Every message is a distinct (opener, phrase, closer), drawn without
    replacement, so neither split holds a repeated text (which ``tailtune train`` would warn about)."""
    rng = random.Random(seed)
    def messages(phrases: list[str], n: int) -> list[str]:
        combos = [(o, p, c) for o in OPENERS for p in phrases for c in CLOSERS]
        return [(o + p + c).strip() for o, p, c in rng.sample(combos, n)]
    train = [(text, y) for y, (n, ph) in INTENTS.items() for text in messages(ph[:-1], n)]
    test = [(text, y) for y, (n, ph) in INTENTS.items() for text in messages(ph[-1:], max(2, n // 4))]
    rng.shuffle(train)
    return train, test


def write_demo_data(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    train, test = make_demo_data()
    paths = {}
    for name, rows in (("train", train), ("test", test)):
        paths[name] = directory / f"{name}.tsv"
        with paths[name].open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["text", "label"])
            w.writerows(rows)
    return paths


def run_demo(output: str | Path = "tailtune-demo", epochs: float | None = None, preset: str = "auto",
             overwrite: bool = False) -> dict:
    """Train ``preset`` on the demo data with the embedded default backbone, evaluate, save, predict.
    An earlier demo in ``output`` is replaced; anything else there needs ``overwrite``."""
    from .api import TailtuneClassifier
    from .artefacts import check_writable
    from .config import config_from_preset, preset_train_config
    from .data import class_stats, read_dataset
    from .metrics import export_weight_norms, format_report
    output = Path(output)
    earlier_demo = (output / "data" / "train.tsv").is_file()
    check_writable(output / "model", overwrite or earlier_demo)
    paths = write_demo_data(output / "data")
    train_ds, test_ds = read_dataset(paths["train"]), read_dataset(paths["test"])
    stats = class_stats(train_ds.labels)
    print(f"demo data in {output / 'data'}: {stats['n_examples']} training messages, {stats['n_classes']} intents, "
          f"imbalance ratio {stats['imbalance_ratio']:.0f}; head {stats['head']}, tail {stats['tail']}")
    config = config_from_preset(preset, defaults={"template": "{text} This message is about {mask} ."}, max_length=64)
    recipe = {"seed": 13, **({"epochs": epochs} if epochs else {})}
    clf = TailtuneClassifier(preset, config=config, train_config=preset_train_config(preset, **recipe),
                             dev_fraction=0.15)
    print(f"training '{preset}' on the embedded all-MiniLM-L6-v2 backbone ...")
    clf.fit(train_ds)
    report = clf.evaluate(test_ds)
    print(format_report(report))
    clf.save(output / "model", overwrite=True)
    export_weight_norms(clf.weight_norms(), output / "model" / "analysis", f"demo / {preset}")
    samples = ["my password does not work anymore", "the parcel never came", "is my toaster still under guarantee"]
    for text, label in zip(samples, clf.predict(samples)):
        print(f"predict: {text!r} -> {label}")
    print(f"saved classifier to {output / 'model'}; try: tailtune predict {output / 'model'} \"where is my order\"")
    return report
