"""mm_classifier: which concepts are in a photo and its caption, as a transformers model trained on Flickr8k."""

from transformers import AutoConfig, AutoModel

from .configuration import MultiModalConfig
from .data import DataWarning, load_flickr8k, to_pairs
from .errors import MMClassifierError
from .labels import CONCEPT_LEXICON, leave_one_out_labels, leave_one_out_votes, load_concept_file, mine_concepts
from .modeling import MultiModalClassifier, MultiModalOutput
from .predict import Prediction, Predictor
from .processing import MultiModalProcessor, load_image
from .tokenization import build_tokenizer

# `AutoModel.from_pretrained(dir)` works in any process that has imported mm_classifier.
AutoConfig.register(MultiModalConfig.model_type, MultiModalConfig, exist_ok=True)
AutoModel.register(MultiModalConfig, MultiModalClassifier, exist_ok=True)

__all__ = [
    "CONCEPT_LEXICON",
    "DataWarning",
    "MMClassifierError",
    "MultiModalClassifier",
    "MultiModalConfig",
    "MultiModalOutput",
    "MultiModalProcessor",
    "Prediction",
    "Predictor",
    "build_tokenizer",
    "leave_one_out_labels",
    "leave_one_out_votes",
    "load_concept_file",
    "load_flickr8k",
    "load_image",
    "mine_concepts",
    "to_pairs",
]
