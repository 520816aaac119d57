"""Language-model adaptation: continue masked-LM training of a backbone on unlabelled text.

PPT's "LM adaptation" baseline, and the way to give backbones that ship without an MLM head
(such as the default MiniLM) a trained one. Efficient on CPU: the vocabulary projection is
computed only at masked positions, batches are length-grouped with dynamic padding, and
training resumes from the last checkpoint in ``<output>/checkpoint``.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .backbone import _quiet_transformers, load_tokenizer, mlm_parts, resolve_name
from .data import DataError
from .train import _autocast, length_grouped_batches, resolve_device


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

    def __post_init__(self):
        if self.trains not in ("all", "head"):
            raise ValueError(f"trains={self.trains!r} is not one of all, head")
        if not 0 < self.mlm_probability < 1 or self.steps < 1 or self.max_length < 8:
            raise ValueError("need 0 < mlm_probability < 1, steps >= 1 and max_length >= 8")


def load_chunks(paths: list[str], tokenizer, max_length: int, min_tokens: int = 8) -> list[list[int]]:
    """Token ids of every line, cut into chunks of ``max_length - 2`` (room for [CLS]/[SEP])."""
    if not paths:
        raise DataError("adapt-lm needs unlabelled text: --data FILE [FILE ...] (one document per line)")
    size = max_length - 2
    chunks = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"unlabelled text file not found: {path}")
        lines = [x.strip() for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
        with _quiet_transformers():  # long documents are expected: they are cut into chunks below
            encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            chunks += [ids[s:s + size] for s in range(0, len(ids), size) if len(ids[s:s + size]) >= min_tokens]
    if not chunks:
        raise DataError(f"{', '.join(paths)}: no line has {min_tokens} or more tokens")
    return chunks


def mask_batch(chunks: list[list[int]], tokenizer, probability: float, generator: torch.Generator) -> dict:
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

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.parts = mlm_parts(model)

    def forward(self, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits ``(masked tokens, vocab)`` and their gold ids."""
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        where = labels != -100
        p = self.parts
        z = p.layer_norm(p.act(p.dense(hidden[where])))  # (masked, hidden)
        logits = z @ p.decoder.weight.T + p.bias
        gold = labels[where]
        return F.cross_entropy(logits.float(), gold), logits, gold


@torch.no_grad()
def evaluate_mlm(lm: MaskedLM, batches: list[dict], device, bf16: bool) -> dict:
    """Masked-token top-1 / top-5 accuracy and loss on fixed, pre-masked batches."""
    lm.eval()
    top1 = top5 = n = 0
    loss = 0.0
    for b in batches:
        with _autocast(device, bf16):
            batch_loss, logits, gold = lm(**{k: v.to(device) for k, v in b.items()})
        best = logits.float().topk(5, -1).indices
        top1 += (best[:, 0] == gold).sum().item()
        top5 += (best == gold[:, None]).any(-1).sum().item()
        loss += batch_loss.item() * len(gold)
        n += len(gold)
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "masked_tokens": n}


def _trainable(lm: MaskedLM, trains: str) -> list[tuple[str, torch.nn.Parameter]]:
    head = {id(p) for m in (lm.parts.dense, lm.parts.layer_norm) for p in m.parameters()} | {id(lm.parts.bias)}
    out = []
    for name, p in lm.named_parameters():
        p.requires_grad_(trains == "all" or id(p) in head)
        if p.requires_grad:
            out.append((name, p))
    return out


def _save_checkpoint(directory: Path, step: int, seconds: float, params, optimizer) -> None:
    from safetensors.torch import save_file
    directory.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in params}, str(directory / "params.safetensors"))
    state = {}
    for n, p in params:
        for k, v in optimizer.state.get(p, {}).items():
            state[f"{n}::{k}"] = v.detach().cpu().contiguous().reshape(-1) if v.dim() == 0 else v.detach().cpu().contiguous()
    save_file(state, str(directory / "optimizer.safetensors"))
    (directory / "state.json").write_text(json.dumps({"step": step, "seconds": seconds}))


def _load_checkpoint(directory: Path, params, optimizer, device) -> tuple[int, float]:
    from safetensors.torch import load_file
    saved = load_file(str(directory / "params.safetensors"), device=str(device))
    state = load_file(str(directory / "optimizer.safetensors"), device=str(device))
    with torch.no_grad():
        for n, p in params:
            if n not in saved:
                raise ValueError(f"{directory} is a checkpoint of another configuration (no {n}); "
                                 f"delete it or use another --output")
            p.copy_(saved[n])
            optimizer.state[p] = {k.split("::", 1)[1]: (v.reshape(()) if k.endswith("::step") else v)
                                  for k, v in state.items() if k.startswith(n + "::")}
    state = json.loads((directory / "state.json").read_text())
    return state["step"], state["seconds"]


def adapt_lm(cfg: AdaptConfig, log=print) -> dict:
    """Run (or resume) MLM adaptation; save the adapted backbone and ``adapt_lm.json``."""
    from transformers import AutoModelForMaskedLM
    out = Path(cfg.output)
    report_path = out / "adapt_lm.json"
    if report_path.is_file() and json.loads(report_path.read_text()).get("steps_done") == cfg.steps:
        log(f"{out} already holds a finished adaptation ({cfg.steps} steps); nothing to do")
        return json.loads(report_path.read_text())
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.backbone or "default")
    with _quiet_transformers():
        model, info = AutoModelForMaskedLM.from_pretrained(resolve_name(cfg.backbone), output_loading_info=True)
    lm = MaskedLM(model).to(device)
    missing_head = [k for k in info.get("missing_keys", []) if "embeddings" not in k]
    chunks = load_chunks(cfg.data, tokenizer, cfg.max_length)
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

    params = _trainable(lm, cfg.trains)
    decay = [p for n, p in params if p.dim() >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in params if not (p.dim() >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    ckpt = out / "checkpoint"
    step, seconds_before = _load_checkpoint(ckpt, params, optimizer, device) if (ckpt / "state.json").is_file() \
        else (0, 0.0)
    if step:
        log(f"resuming from {ckpt} at step {step}")
    warmup = int(cfg.steps * cfg.warmup_ratio)
    lengths = [len(c) for c in train_chunks]
    per_epoch = math.ceil(len(train_chunks) / cfg.batch_size)
    lm.train()
    start = time.perf_counter()
    epoch_batches, epoch = [], -1
    while step < cfg.steps:
        if step // per_epoch != epoch:  # batch order depends only on (seed, epoch): resumable
            epoch = step // per_epoch
            epoch_batches = length_grouped_batches(lengths, cfg.batch_size, random.Random(cfg.seed * 1000 + epoch))
        idx = epoch_batches[step % per_epoch]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # masks depend only on the step
        torch.manual_seed(cfg.seed * 7919 + step)  # and so does dropout: a resumed run is the same run
        batch = {k: v.to(device) for k, v in mask_batch([train_chunks[i] for i in idx], tokenizer,
                                                        cfg.mlm_probability, gen).items()}
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * ((step + 1) / (warmup + 1) if step < warmup
                                    else max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup)))
        with _autocast(device, cfg.bf16):
            loss, _, _ = lm(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % cfg.save_every == 0 or step == cfg.steps:
            _save_checkpoint(ckpt, step, seconds_before + time.perf_counter() - start, params, optimizer)
            log(f"step {step}/{cfg.steps} loss {loss.item():.3f}")
    seconds = seconds_before + time.perf_counter() - start
    after = evaluate_mlm(lm, eval_batches, device, cfg.bf16)
    log(f"after:  top-1 {after['top1']:.4f} top-5 {after['top5']:.4f} loss {after['loss']:.3f}")
    with _quiet_transformers():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    report = {"config": asdict(cfg), "before": before, "after": after, "steps_done": step,
              "train_seconds": round(seconds, 1), "train_chunks": len(train_chunks), "held_out_chunks": len(held_out),
              "mlm_head_was_missing": missing_head}
    report_path.write_text(json.dumps(report, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: the adapted model is saved
    return report
