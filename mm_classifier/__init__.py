"""mm_classifier: which concepts are in a photo and its caption, as a transformers model trained on Flickr8k."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration import MultiModalConfig
from .data import DataWarning, load_flickr8k, to_pairs
from .errors import MMClassifierError
from .labels import CONCEPT_LEXICON, leave_one_out_labels, leave_one_out_votes, load_concept_file, mine_concepts
from .modeling import MultiModalClassifier, MultiModalOutput
from .pipeline import PIPELINE_TASK, MultiModalClassificationPipeline
from .predict import Prediction, Predictor
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

__all__ = [
    "CONCEPT_LEXICON",
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
    "mine_concepts",
    "to_pairs",
]
