import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_bert, make_roberta  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return make_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory):
    return make_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(params=["bert", "roberta"])
def tiny_model(request, tiny_bert, tiny_roberta):
    return {"bert": tiny_bert, "roberta": tiny_roberta}[request.param]


# a toy task the tiny vocabulary can express: sentiment words vs. business words
TOY_TEXTS = ["the movie was great", "a good film", "great food", "good game",
             "bad food", "terrible movie", "an awful game", "the film was bad",
             "the market price", "stock earn news", "oil price", "trade market"]
TOY_LABELS = ["good"] * 4 + ["bad"] * 4 + ["money"] * 4


@pytest.fixture
def toy():
    return TOY_TEXTS * 3, TOY_LABELS * 3


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
