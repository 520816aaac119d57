"""tailtune: tune BERT-family encoders into few-shot and long-tailed text classifiers."""
from .api import TailtuneClassifier
from .artefacts import save_classifier
from .config import PRESETS, ClassifierConfig, config_from_preset, preset_train_config
from .data import TextDataset, class_stats, from_hf, head_tail_split, k_shot, read_dataset, stratified_split
from .errors import ArtefactError, ConfigError, DataError, TailtuneError, TrainingError
from .inputs import Template, Verbalizer
from .loop import TrainConfig
from .metrics import long_tail_report
from .model import Classifier, build_classifier
from .registry import AXES, CALIBRATIONS, HEADS, INPUT_FORMATS, OBJECTIVES, READOUTS, TRAINS
from .train import train
from .version import __version__

__all__ = [
    "TailtuneClassifier", "TextDataset", "read_dataset", "from_hf", "class_stats", "head_tail_split",
    "stratified_split", "k_shot", "long_tail_report", "PRESETS", "Classifier", "ClassifierConfig",
    "config_from_preset", "preset_train_config", "build_classifier", "save_classifier", "Template", "Verbalizer", "TrainConfig", "train",
    "TailtuneError", "ConfigError", "DataError", "ArtefactError", "TrainingError",
    "AXES", "INPUT_FORMATS", "READOUTS", "HEADS", "TRAINS", "OBJECTIVES", "CALIBRATIONS", "__version__",
]
