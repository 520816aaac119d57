"""Language-model adaptation: continue masked-LM training of a backbone on unlabelled text.

PPT's "LM adaptation" baseline, and the way to give backbones that ship without an MLM head
(such as the default MiniLM) a trained one. Efficient on CPU: the vocabulary projection is
computed only at masked positions, batches are length-grouped with dynamic padding, and
a killed run resumes (``--resume``) from the last checkpoint in ``<output>/checkpoint``. It runs on
the one training loop (``tailtune.loop``).
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..artefacts import read_json, staged_dir, write_json
from ..processes import is_main_process, prepare_output_once
from ..backbone import load_tokenizer, mlm_parts, quiet_transformers, resolve_name
from ..device import autocast, resolve_device, set_seed
from ..errors import ConfigError, DataError
from ..loop import TrainConfig, run
from ..registry import check_choice
from ..training import length_grouped_batches


@dataclass
class AdaptConfig:
    """Settings of ``tailtune adapt-lm``. Field comments double as CLI help."""

    data: list[str] = field(default_factory=list)
    """unlabelled text files, one document or paragraph per line"""
    output: str = "adapted-lm"
    """directory for the adapted backbone (Hugging Face format, with its MLM head)"""
    backbone: str | None = None
    """backbone to adapt (default: the embedded MiniLM)"""
    trains: str = "all"
    """all (encoder + MLM head) or head (the MLM head's transform and bias only)"""
    steps: int = 1000
    """optimisation steps"""
    batch_size: int = 32
    """sequences per step"""
    max_length: int = 128
    """tokens per sequence (documents are cut into chunks of this length)"""
    lr: float = 5e-5
    """peak learning rate (linear warm-up, then linear decay)"""
    warmup_ratio: float = 0.06
    """share of steps with linear warm-up"""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and LayerNorms)"""
    mlm_probability: float = 0.15
    """share of tokens masked (BERT's 80/10/10 replacement)"""
    eval_sequences: int = 500
    """held-out chunks for masked-token accuracy (fixed masks, before and after)"""
    save_every: int = 200
    """write a resumable checkpoint every N steps"""
    seed: int = 13
    """seed for the held-out split, batch order and masking"""
    bf16: bool = False
    """bfloat16 autocast"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    resume: bool = False
    """continue an interrupted run from <output>/checkpoint"""
    overwrite: bool = False
    """replace a non-empty output directory (once the new one is complete)"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        check_choice(self, "trains", ("all", "head"))
        if not 0 < self.mlm_probability < 1 or self.steps < 1 or self.max_length < 8:
            raise ConfigError(f"need 0 < mlm_probability < 1, steps >= 1 and max_length >= 8; got "
                              f"{self.mlm_probability}, {self.steps}, {self.max_length}")

    def train_config(self) -> TrainConfig:
        """The loop's settings: a fixed number of steps, one learning rate, clipping at 1.0."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup_ratio=self.warmup_ratio,
                           weight_decay=self.weight_decay, save_every=self.save_every, seed=self.seed,
                           bf16=self.bf16, device=self.device, progress=self.progress)


def load_chunks(paths: list[str], tokenizer: Any, max_length: int, min_tokens: int = 8) -> list[list[int]]:
    """Token ids of every line, cut into chunks of ``max_length - 2`` (room for [CLS]/[SEP])."""
    if not paths:
        raise DataError("adapt-lm needs unlabelled text: --data FILE [FILE ...] (one document per line)")
    size = max_length - 2
    chunks = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"unlabelled text file not found: {path}")
        lines = [x.strip() for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
        with quiet_transformers():  # long documents are expected: they are cut into chunks below
            encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            chunks += [ids[s:s + size] for s in range(0, len(ids), size) if len(ids[s:s + size]) >= min_tokens]
    if not chunks:
        raise DataError(f"{', '.join(paths)}: no line has {min_tokens} or more tokens")
    return chunks


def mask_batch(chunks: list[list[int]], tokenizer: Any, probability: float, generator: torch.Generator) -> dict:
    """Pad, add special tokens and mask (80 % [MASK], 10 % random token, 10 % kept); labels are
    -100 except at masked positions. Every sequence gets at least one masked token."""
    width = max(len(c) for c in chunks) + 2
    ids = torch.full((len(chunks), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, c in enumerate(chunks):
        ids[i, :len(c) + 2] = torch.tensor([tokenizer.cls_token_id, *c, tokenizer.sep_token_id])
        attention[i, :len(c) + 2] = 1
    content = attention.bool().clone()
    content[:, 0] = False
    content[torch.arange(len(chunks)), attention.sum(1) - 1] = False
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & content
    first = content.float().argmax(1)  # fall back on the first content token
    none = ~chosen.any(1)
    chosen[none, first[none]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    ids = torch.where(chosen & (roll < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    ids = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, ids)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


class MaskedLM(torch.nn.Module):
    """A Hugging Face masked-LM model, scored only at the masked positions."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.parts = mlm_parts(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits ``(masked tokens, vocab)`` and their gold ids."""
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        where = labels != -100
        p = self.parts
        z = p.layer_norm(p.act(p.dense(hidden[where])))  # (masked, hidden)
        logits = z @ p.decoder.weight.T + p.bias
        gold = labels[where]
        return F.cross_entropy(logits.float(), gold), logits, gold


@torch.no_grad()
def evaluate_mlm(lm: MaskedLM, batches: list[dict], device: torch.device, bf16: bool) -> dict:
    """Masked-token top-1 / top-5 accuracy and loss on fixed, pre-masked batches."""
    lm.eval()
    top1 = top5 = n = 0
    loss = 0.0
    for b in batches:
        with autocast(device, bf16):
            batch_loss, logits, gold = lm(**{k: v.to(device) for k, v in b.items()})
        best = logits.float().topk(5, -1).indices
        top1 += (best[:, 0] == gold).sum().item()
        top5 += (best == gold[:, None]).any(-1).sum().item()
        loss += batch_loss.item() * len(gold)
        n += len(gold)
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "masked_tokens": n}


class MaskedLMAux:
    """PET's auxiliary language-modelling task (Schick & Schütze, 2021): beside every labelled
    micro-batch, a masked-LM loss on as many unlabelled texts through the classifier's own encoder and
    MLM head (the verbalizer head's transform and the full decoder), so a prompt model keeps modelling
    language while it learns the task: ``loss = (1 - weight) · task loss + weight · MLM loss`` (PET:
    weight 1e-4). The texts and masks drawn depend only on (seed, step, micro-batch), so a resumed run
    is the same run."""

    def __init__(self, model: Any, texts: list[str], weight: float, batch_size: int, seed: int,
                 max_length: int = 128, mlm_probability: float = 0.15) -> None:
        if not hasattr(model.head, "vocab_logits"):
            raise ConfigError(f"PET's auxiliary MLM loss needs the backbone's MLM head in the classifier "
                              f"(head='verbalizer', as in --preset prompt); head={model.config.head!r} has none. "
                              f"Drop the MLM weight or use a prompt preset")
        if not 0 < weight < 1:
            raise ConfigError(f"the auxiliary MLM weight must be between 0 and 1 (PET: 1e-4), got {weight}")
        with quiet_transformers():
            ids = model.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                                  max_length=max_length - 2)["input_ids"]
        self.chunks = [x for x in ids if x]
        if not self.chunks:
            raise DataError("the auxiliary MLM loss needs unlabelled texts with one or more tokens")
        self.model, self.weight, self.batch_size, self.seed = model, weight, batch_size, seed
        self.mlm_probability = mlm_probability
        self.settings = {"weight": weight, "texts": len(self.chunks), "mlm_probability": mlm_probability,
                         "max_length": max_length}

    def loss(self, idx: list[int], step: int, bf16: bool = False) -> torch.Tensor:
        """The masked-LM loss on ``batch_size`` unlabelled texts drawn for this step and micro-batch."""
        key = self.seed * 1_000_003 + step * 7919 + (idx[0] if idx else 0)
        rng = random.Random(key)
        chunks = [self.chunks[rng.randrange(len(self.chunks))] for _ in range(self.batch_size)]
        batch = mask_batch(chunks, self.model.tokenizer, self.mlm_probability, torch.Generator().manual_seed(key))
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, bf16):
            hidden = self.model.features(batch["input_ids"], batch["attention_mask"])
            where = batch["labels"] != -100
            logits = self.model.head.vocab_logits(hidden[where])
        return F.cross_entropy(logits.float(), batch["labels"][where])


class MaskedLMJob:
    """The loop's job for masked-LM adaptation: length-grouped chunks, BERT masking.

    Batch order depends only on (seed, epoch), and masks and dropout only on (seed, step), so a
    resumed run is the same run."""

    def __init__(self, lm: MaskedLM, chunks: list[list[int]], tokenizer: Any, cfg: AdaptConfig,
                 device: torch.device) -> None:
        self.model, self.chunks, self.tokenizer, self.cfg, self.device = lm, chunks, tokenizer, cfg, device
        self.lengths = [len(c) for c in chunks]
        self.micro_batches = math.ceil(len(chunks) / cfg.batch_size)
        head = {id(p) for m in (lm.parts.dense, lm.parts.layer_norm) for p in m.parameters()} | {id(lm.parts.bias)}
        for p in lm.parameters():
            p.requires_grad_(cfg.trains == "all" or id(p) in head)
        keep = ("backbone", "trains", "steps", "batch_size", "max_length", "lr", "warmup_ratio", "weight_decay",
                "mlm_probability", "eval_sequences", "seed", "bf16", "data")
        self.settings = {k: v for k, v in asdict(cfg).items() if k in keep}

    def batches(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths, self.cfg.batch_size, random.Random(self.cfg.seed * 1000 + epoch))

    def loss(self, idx: list[int], step: int) -> torch.Tensor:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # masks depend only on the step
        torch.manual_seed(cfg.seed * 7919 + step)  # and so does dropout
        batch = mask_batch([self.chunks[i] for i in idx], self.tokenizer, cfg.mlm_probability, gen)
        with autocast(self.device, cfg.bf16):
            loss, _, _ = self.model(**{k: v.to(self.device) for k, v in batch.items()})
        return loss

    def param_roles(self) -> dict[str, str]:
        return {n: "backbone" for n, p in self.model.named_parameters() if p.requires_grad}


def adapt_lm(cfg: AdaptConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) MLM adaptation; save the adapted backbone and ``adapt_lm.json`` atomically."""
    from transformers import AutoModelForMaskedLM
    out = Path(cfg.output)
    report_path = out / "adapt_lm.json"
    if report_path.is_file() and read_json(report_path).get("steps_done") == cfg.steps and not cfg.overwrite:
        log(f"{out} already holds a finished adaptation ({cfg.steps} steps); nothing to do")
        return read_json(report_path)
    ckpt = prepare_output_once(out, cfg.overwrite, cfg.resume, cfg.device)
    device = resolve_device(cfg.device)
    tc = cfg.train_config()
    tokenizer = load_tokenizer(cfg.backbone or "default")
    chunks = load_chunks(cfg.data, tokenizer, cfg.max_length)
    set_seed(cfg.seed)  # a missing MLM head starts random: from the seed, not from whatever ran before
    with quiet_transformers():
        model, info = AutoModelForMaskedLM.from_pretrained(resolve_name(cfg.backbone), output_loading_info=True)
    lm = MaskedLM(model).to(device)
    missing_head = [k for k in info.get("missing_keys", []) if "embeddings" not in k]
    order = list(range(len(chunks)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = min(cfg.eval_sequences, len(chunks) // 5)
    held_out, train_chunks = [chunks[i] for i in order[:n_eval]], [chunks[i] for i in order[n_eval:]]
    g = torch.Generator().manual_seed(cfg.seed)
    eval_batches = [mask_batch(held_out[s:s + 64], tokenizer, cfg.mlm_probability, g)
                    for s in range(0, len(held_out), 64)]
    log(f"{len(train_chunks)} training chunks, {len(held_out)} held out; "
        f"{'MLM head missing in the checkpoint, starts random: ' + ', '.join(missing_head) if missing_head else 'pretrained MLM head'}")
    before = evaluate_mlm(lm, eval_batches, device, cfg.bf16)
    log(f"before: top-1 {before['top1']:.4f} top-5 {before['top5']:.4f} loss {before['loss']:.3f}")
    job = MaskedLMJob(lm, train_chunks, tokenizer, cfg, device)
    result = run(job, tc, checkpoint_dir=ckpt, resume=cfg.resume, log=log)
    after = evaluate_mlm(lm, eval_batches, device, cfg.bf16)
    log(f"after:  top-1 {after['top1']:.4f} top-5 {after['top5']:.4f} loss {after['loss']:.3f}")
    report = {"config": asdict(cfg), "before": before, "after": after, "steps_done": result.steps,
              "train_seconds": round(result.seconds, 1), "train_chunks": len(train_chunks),
              "held_out_chunks": len(held_out), "mlm_head_was_missing": missing_head,
              "final_loss": result.history[-1]["loss"] if result.history else None}
    if not is_main_process():  # under `accelerate launch` the main process saves
        return report
    with staged_dir(out, overwrite=True) as tmp:  # the finished model replaces the checkpoint
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "adapt_lm.json", report)
    return report
