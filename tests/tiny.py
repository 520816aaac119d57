"""Tiny random BERT and RoBERTa models with locally built tokenizers (no downloads)."""
from __future__ import annotations

from pathlib import Path

WORDS = ("the a is it was about this news question sports business science health world "
         "money fx interest rate oil grain ship trade great good bad terrible awful fine "
         "movie film food game team market price stock earn acq crude what who where when "
         "how why location person number description entity human desc manner city "
         "country date").split()


def make_bert(directory: Path, seed: int = 0) -> str:
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!"] + WORDS + \
            [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizer(str(directory / "vocab.txt"))
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128,
                     initializer_range=0.2)  # larger init: frozen random features still differ per input
    BertForMaskedLM(cfg).save_pretrained(directory)
    return str(directory)


def make_roberta(directory: Path, seed: int = 0) -> str:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS)] * 4 + [w for w in WORDS]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    import json
    vocab = json.loads((directory / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (directory / "merges.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    tok = RobertaTokenizerFast(vocab=vocab, merges=merges)
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id, initializer_range=0.2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    RobertaForMaskedLM(cfg).save_pretrained(directory)
    return str(directory)


def make_distilbert(directory: Path, seed: int = 0) -> str:
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM
    bert_dir = Path(make_bert(directory / "tok", seed))  # reuse the word-piece vocabulary
    tok = AutoTokenizer.from_pretrained(bert_dir)
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=128, initializer_range=0.2)
    DistilBertForMaskedLM(cfg).save_pretrained(directory)
    return str(directory)


def perturbed_module(preset: str, backbone: str, path: Path, labels=("a", "b", "c"), seed: int = 0, **options):
    """A saved classifier whose trainable parameters moved away from their initialisation (so no task
    module is the identity); returns the model."""
    import torch

    import tailtune as tt
    torch.manual_seed(seed)
    model = tt.build_classifier(tt.config_from_preset(preset, **options), list(labels), backbone)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    tt.save_classifier(model, path)
    return model
