import pytest

import tailtune as tt
from tailtune.backbone import load_tokenizer
from tailtune.inputs import TemplateError, Verbalizer, readable


@pytest.mark.parametrize("template,message", [
    ("{text} no mask here", "exactly one"),
    ("{text} {mask} {mask}", "exactly one"),
    ("{mask} only", "no {text} slot"),
    ("{text} {label} {mask}", "unknown slot"),
])
def test_bad_templates(template, message):
    with pytest.raises(TemplateError, match=message):
        tt.Template(template)


def test_mask_position_and_words(tiny_model):
    tok = load_tokenizer(tiny_model)
    enc = tt.Template("{text} it is about {mask} .").encode(tok, ["the movie was great"], None, 32)[0]
    assert enc.input_ids[enc.position] == tok.mask_token_id
    assert enc.input_ids.count(tok.mask_token_id) == 1
    assert enc.input_ids[0] == tok.cls_token_id and enc.input_ids[-1] == tok.sep_token_id


def test_truncation_keeps_template_and_mask(tiny_model):
    tok = load_tokenizer(tiny_model)
    long_text = " ".join(["the movie was great"] * 50)
    t = tt.Template("{text} {text_b} is a {mask} entity .")
    enc = t.encode(tok, [long_text], ["oil"], 24)[0]
    assert len(enc.input_ids) == 24
    assert enc.input_ids[enc.position] == tok.mask_token_id
    tail = tok.convert_ids_to_tokens(enc.input_ids[-3:])
    assert tail[-1] == tok.sep_token and tail[-2].lstrip("Ġ") == "."
    assert tok(" oil", add_special_tokens=False)["input_ids"][0] in enc.input_ids  # text_b survives
    with pytest.raises(TemplateError, match="no second text"):
        t.encode(tok, ["x"], None, 24)
    with pytest.raises(TemplateError, match="leaves no room"):
        tt.Template("{text} it is about the movie news {mask} .").encode(tok, ["x"], None, 8)


def test_plain_format_reads_cls(tiny_bert):
    model = tt.build_classifier(tt.config_from_preset("cls", max_length=16), ["a", "b"], tiny_bert)
    enc = model.encode(["the movie " * 40], ["oil"])
    assert enc[0].position == 0 and len(enc[0].input_ids) == 16 and enc[0].token_type_ids is not None


def test_verbalizer_defaults_and_tokens(tiny_bert):
    assert readable("DESC:manner") == "DESC manner" and readable("money-fx") == "money fx"
    tok = load_tokenizer(tiny_bert)
    v = Verbalizer(["good", "money_fx"], {"good": ["good", "great"]})
    ids = v.token_ids(tok)
    assert len(ids["good"]) == 2 and len(ids["money_fx"][0]) == 2  # "money fx" -> two tokens
    rows = v.describe(tok)
    assert rows[0]["tokens"] == ["good"] and not rows[0]["unknown"]
    with pytest.warns(UserWarning, match="unknown to the vocabulary"):
        Verbalizer(["x"], {"x": "zebra€"}).check(tok)
    with pytest.raises(ValueError, match="not in the label space"):
        Verbalizer(["a"], {"b": "x"})
