"""tailtune: tune BERT-family encoders into few-shot and long-tailed text classifiers."""
__version__ = "0.1.0"

from .api import TailtuneClassifier
from .data import DataError, TextDataset, class_stats, from_hf, head_tail_split, k_shot, read_dataset, stratified_split
from .metrics import long_tail_report
from .model import PRESETS, Classifier, ClassifierConfig, build_classifier, config_from_preset
from .prompts import Template, Verbalizer
from .train import TrainConfig, train

__all__ = [
    "TailtuneClassifier", "TextDataset", "DataError", "read_dataset", "from_hf", "class_stats",
    "head_tail_split", "stratified_split", "k_shot", "long_tail_report", "PRESETS", "Classifier",
    "ClassifierConfig", "config_from_preset", "build_classifier", "Template", "Verbalizer",
    "TrainConfig", "train", "__version__",
]
