"""mm_classifier: which concepts are in a photo and its caption, as a transformers model trained on Flickr8k."""

import importlib

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration import MultiModalConfig
from .errors import MMClassifierError
from .labels import CONCEPT_LEXICON, leave_one_out_labels, leave_one_out_votes, load_concept_file, mine_concepts
from .modeling import MultiModalClassifier, MultiModalOutput
from .pipeline import PIPELINE_TASK, MultiModalClassificationPipeline
from .processing import MultiModalImageProcessor, MultiModalProcessor, load_image
from .tokenization import build_tokenizer

# In any process that has imported mm_classifier, the Auto classes load a saved folder with these classes, never
# with the code files copied into it (those are for programs without this package: docs/model_folder.md).
AutoConfig.register(MultiModalConfig.model_type, MultiModalConfig, exist_ok=True)
AutoModel.register(MultiModalConfig, MultiModalClassifier, exist_ok=True)
# One class whichever backend transformers asks for: it resizes with PIL and normalises with torch.
AutoImageProcessor.register(
    MultiModalConfig, exist_ok=True,
    image_processor_classes={"pil": MultiModalImageProcessor, "torchvision": MultiModalImageProcessor},
)
AutoProcessor.register(MultiModalConfig, MultiModalProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=MultiModalClassificationPipeline, pt_model=AutoModel, type="multimodal"
)



# Loaded on first use, so that `python -m mm_classifier.predict` (or .data) runs its module once, as
# __main__: imported here first, runpy would warn that the module is already in sys.modules.
_LAZY = {
    "DataSource": "data",
    "DataWarning": "data",
    "load_flickr8k": "data",
    "load_photos": "data",
    "to_pairs": "data",
    "Prediction": "predict",
    "Predictor": "predict",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONCEPT_LEXICON",
    "DataSource",
    "DataWarning",
    "MMClassifierError",
    "MultiModalClassificationPipeline",
    "MultiModalClassifier",
    "MultiModalConfig",
    "MultiModalImageProcessor",
    "MultiModalOutput",
    "MultiModalProcessor",
    "PIPELINE_TASK",
    "Prediction",
    "Predictor",
    "build_tokenizer",
    "leave_one_out_labels",
    "leave_one_out_votes",
    "load_concept_file",
    "load_flickr8k",
    "load_image",
    "load_photos",
    "mine_concepts",
    "to_pairs",
]
