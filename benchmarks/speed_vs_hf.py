"""tailtune's loop vs a plain Hugging Face Trainer script, for CLS-tuning or LoRA.

Same model (embedded MiniLM default), data, batch size, max length, epochs, learning rate,
warm-up and bf16 setting; no evaluation during training on either side. ``--method lora``
puts the same LoRA (PEFT, r=8, alpha=16, dropout 0.1, query+value) on both sides: tailtune's
``lora`` preset, and ``peft.get_peft_model`` on ``AutoModelForSequenceClassification``.

    python benchmarks/speed_vs_hf.py --data-dir ../shared/data     # -> results/speed_vs_hf.json
    python benchmarks/speed_vs_hf.py --method lora --dataset longtail/trec50 --max-length 64 \
        --batch-size 32 --epochs 3 --lr 1e-3 --out benchmarks/results/lora_vs_peft.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, f1_score

from tailtune import TrainConfig, build_classifier, config_from_preset, read_dataset
from tailtune.backbone import default_backbone_path
from tailtune.data import label_space
from tailtune.device import set_seed
from tailtune.training import predict_logits, train


def run_tailtune(tr, te, labels, a):
    set_seed(a.seed)
    model = build_classifier(config_from_preset(a.method, max_length=a.max_length), labels)
    t0 = time.perf_counter()
    model.encode(tr.texts)  # tokenisation time alone (train() encodes again, before its clock starts)
    t_tok = time.perf_counter() - t0
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, bf16=a.bf16, seed=a.seed, progress=False)
    res = train(model, tr, cfg)
    pred = predict_logits(model, model.encode(te.texts), 128, a.bf16).argmax(-1).tolist()
    return {"tokenize_s": t_tok, "train_epoch_s": res.seconds / a.epochs,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "macro_f1": f1_score(te.labels, [labels[i] for i in pred], average="macro"),
            "accuracy": accuracy_score(te.labels, [labels[i] for i in pred])}


def run_hf(tr, te, labels, a):
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)
    path = default_backbone_path()
    tok = AutoTokenizer.from_pretrained(path)
    idx = {c: i for i, c in enumerate(labels)}
    t0 = time.perf_counter()
    def encode(ds):
        d = Dataset.from_dict({"text": ds.texts, "label": [idx[y] for y in ds.labels]})
        return d.map(lambda b: tok(b["text"], truncation=True, max_length=a.max_length), batched=True,
                     remove_columns=["text"])
    dtr = encode(tr)
    t_tok = time.perf_counter() - t0
    dte = encode(te)
    torch.manual_seed(a.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    if a.method == "lora":  # PEFT's own recipe; pooler + classifier train, as tailtune's MLP head does
        from peft import LoraConfig, TaskType, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "value"],
                                                 modules_to_save=["pooler", "classifier"]))
    args = TrainingArguments(output_dir=str(Path(a.out).parent / "hf_tmp"), per_device_train_batch_size=a.batch_size,
                             per_device_eval_batch_size=128, num_train_epochs=a.epochs, learning_rate=a.lr,
                             warmup_steps=0.1, weight_decay=0.01, max_grad_norm=1.0, bf16=a.bf16,
                             use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no",
                             eval_strategy="no", logging_strategy="no", seed=a.seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dtr, data_collator=DataCollatorWithPadding(tok))
    t0 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t0
    pred = trainer.predict(dte).predictions.argmax(-1).tolist()
    return {"tokenize_s": t_tok, "train_epoch_s": t_train / a.epochs,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "macro_f1": f1_score(te.labels, [labels[i] for i in pred], average="macro"),
            "accuracy": accuracy_score(te.labels, [labels[i] for i in pred])}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=os.environ.get("TAILTUNE_DATA", "../shared/data"))
    p.add_argument("--method", choices=["cls", "lora"], default="cls")
    p.add_argument("--dataset", default="longtail/r52")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--limit", type=int, default=None, help="first N train/test examples (smoke runs)")
    p.add_argument("--out", default="benchmarks/results/speed_vs_hf.json")
    a = p.parse_args()
    d = Path(a.data_dir) / a.dataset
    tr, te = read_dataset(d / "train.tsv"), read_dataset(d / "test.tsv")
    if a.limit:
        tr, te = tr.subset(range(min(a.limit, len(tr)))), te.subset(range(min(a.limit, len(te))))
    labels = label_space(tr.labels)
    te = te.subset([i for i, y in enumerate(te.labels) if y in set(labels)])
    ours, hf = run_tailtune(tr, te, labels, a), run_hf(tr, te, labels, a)
    out = {"setup": {**vars(a), "train_examples": len(tr), "test_examples": len(te),
                     "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu"},
           "tailtune": ours, "hf_trainer": hf,
           "epoch_time_ratio_hf_over_tailtune": hf["train_epoch_s"] / ours["train_epoch_s"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
