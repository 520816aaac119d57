"""Would a fused encoder layer make fp32 prediction faster? Hugging Face's eager BERT layer (SDPA attention)
against (a) the same layer with the query/key/value projections fused into one matmul and (b) PyTorch's
fused inference kernel for post-LayerNorm encoder layers (``torch._transformer_encoder_layer_fwd``, the fast
path of ``nn.TransformerEncoderLayer`` that BetterTransformer used; nested tensors skip the padding), on
the embedded MiniLM, and (c) oneDNN's fused linear kernels (``torch.ops.mkldnn._linear_pointwise``, what
Inductor emits on CPU: bias and GELU, or bias and the residual add, as post-ops of the matmul; one fused
query/key/value matmul; weights pre-packed), on R52 test texts sorted by length, length 128, batch 64, best
of 3, interleaved in one process. Only the encoder is timed (no tokenisation, no head).

    python benchmarks/serving/fused_layer.py --threads 1   # -> benchmarks/results/serving/fused_layer.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    import torch
    import torch.nn.functional as F

    from tailtune.backbone import default_backbone_path, load_tokenizer
    from transformers import AutoModel
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/longtail/r52/test.tsv")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default=None, help="what else ran beside this run")
    p.add_argument("--out", default="benchmarks/results/serving/fused_layer.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    path = default_backbone_path()
    tok, model = load_tokenizer(path), AutoModel.from_pretrained(path).eval()
    lines = Path(a.data).read_text(encoding="utf-8").splitlines()[1:a.texts + 1]
    texts = sorted((line.rsplit("\t", 1)[0] for line in lines), key=len)
    batches = [tok(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
               for i in range(0, len(texts), 64)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    heads, layers = model.config.num_attention_heads, model.encoder.layer
    qkv = [(torch.cat([L.attention.self.query.weight, L.attention.self.key.weight, L.attention.self.value.weight]),
            torch.cat([L.attention.self.query.bias, L.attention.self.key.bias, L.attention.self.value.bias]))
           for L in layers]

    def additive_mask(b):  # (batch, 1, 1, seq): 0 on tokens, -inf on padding, for SDPA
        return torch.zeros(b["attention_mask"].shape).masked_fill(b["attention_mask"] == 0, float("-inf"))[:, None, None]

    def eager(b):
        return model(**b).last_hidden_state

    def fused_qkv(b):
        x = model.embeddings(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"])
        bias = additive_mask(b)
        n, s, d = x.shape
        for L, (w, bb) in zip(layers, qkv):
            q, k, v = F.linear(x, w, bb).view(n, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(n, s, d)
            ao, out = L.attention.output, L.output
            x = ao.LayerNorm(ao.dense(o) + x)
            x = out.LayerNorm(out.dense(F.gelu(L.intermediate.dense(x))) + x)
        return x

    def native(b):
        x = model.embeddings(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"])
        n, s, d = x.shape
        xs = torch._nested_tensor_from_mask(x, b["attention_mask"].bool())
        for L, (w, bb) in zip(layers, qkv):
            ao, out = L.attention.output, L.output
            xs = torch._transformer_encoder_layer_fwd(
                xs, d, heads, w, bb, ao.dense.weight, ao.dense.bias, True, False, ao.LayerNorm.eps,
                ao.LayerNorm.weight, ao.LayerNorm.bias, out.LayerNorm.weight, out.LayerNorm.bias,
                L.intermediate.dense.weight, L.intermediate.dense.bias, out.dense.weight, out.dense.bias, None, 0)
        return xs.to_padded_tensor(0.0, (n, s, d))

    mk = torch.ops.mkldnn

    def packed(w):  # oneDNN's own weight layout, once (the plain weights where this build cannot pack them)
        try:
            return mk._reorder_linear_weight(w.detach(), 64)
        except RuntimeError:
            return w.detach()

    packs = [(packed(w), bb, packed(L.attention.output.dense.weight), packed(L.intermediate.dense.weight),
              packed(L.output.dense.weight)) for L, (w, bb) in zip(layers, qkv)]

    def onednn(b):
        x = model.embeddings(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"])
        bias = additive_mask(b)
        n, s, d = x.shape
        x = x.reshape(n * s, d)
        for L, (w, bb, wo, wi, wf) in zip(layers, packs):
            q, k, v = mk._linear_pointwise(x, w, bb, "none", [], "").view(n, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(n * s, d)
            ao, out = L.attention.output, L.output
            x = ao.LayerNorm(mk._linear_pointwise.binary(o, x, wo, ao.dense.bias, "add"))
            h = mk._linear_pointwise(x, wi, L.intermediate.dense.bias, "gelu", [], "none")
            x = out.LayerNorm(mk._linear_pointwise.binary(h, x, wf, out.dense.bias, "add"))
        return x.view(n, s, d)

    runs = {"eager": eager, "fused-qkv": fused_qkv, "native-fused-layer": native, "onednn-fused-linear": onednn}
    best: dict[str, float] = {}
    with torch.inference_mode():
        ref = [eager(b) for b in batches[-1:]][0]
        mask = batches[-1]["attention_mask"].bool()
        diffs = {name: float((f(batches[-1]) - ref)[mask].abs().max()) for name, f in runs.items()}
        for _ in range(3):
            for name, f in runs.items():
                start = time.perf_counter()
                for b in batches:
                    f(b)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    result = {"texts": len(texts), "tokens": tokens, "threads": a.threads, "torch": torch.__version__,
              **({"note": a.note} if a.note else {}),
              "runs": {name: {"seconds": best[name], "tokens_per_s": tokens / best[name],
                              "vs_eager": best["eager"] / best[name], "max_abs_diff": diffs[name]} for name in runs}}
    for name, r in result["runs"].items():
        print(f"{name:20s} {r['tokens_per_s']:8.0f} tokens/s  {r['vs_eager']:.2f}x  max diff {r['max_abs_diff']:.1e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
