"""mm_classifier: which concepts are in a photo and its caption, as a transformers model trained on Flickr8k.

Importing the package is cheap: each name below loads its module on first use, so that the ONNX runtime
(``Predictor.from_pretrained(folder, backend="onnx")``, docs/app.md) runs without torch, transformers or timm.
The transformers Auto classes and the pipeline task are registered once transformers is imported, whichever of
the two comes first (:func:`_register_auto_classes`).
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Each public name -> the module that defines it.
_LAZY = {
    "MultiModalConfig": "configuration",
    "MMClassifierError": "errors",
    "CONCEPT_LEXICON": "labels",
    "leave_one_out_labels": "labels",
    "leave_one_out_votes": "labels",
    "load_concept_file": "labels",
    "mine_concepts": "labels",
    "MultiModalClassifier": "modeling",
    "MultiModalOutput": "modeling",
    "PIPELINE_TASK": "pipeline",
    "MultiModalClassificationPipeline": "pipeline",
    "MultiModalImageProcessor": "processing",
    "MultiModalProcessor": "processing",
    "load_image": "images",
    "build_tokenizer": "tokenization",
    "DataSource": "data",
    "DataWarning": "data",
    "load_flickr8k": "data",
    "load_photos": "data",
    "to_pairs": "data",
    "Prediction": "prediction",
    "Predictor": "predict",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_auto_classes() -> None:
    """In any process that has imported mm_classifier, the Auto classes load a saved folder with these classes, never
    with the code files copied into it (those are for programs without this package: docs/model_folder.md)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration import MultiModalConfig
    from .modeling import MultiModalClassifier
    from .pipeline import PIPELINE_TASK, MultiModalClassificationPipeline
    from .processing import MultiModalImageProcessor, MultiModalProcessor

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


class _RegisterWithTransformers(importlib.abc.MetaPathFinder):
    """Runs :func:`_register_auto_classes` once transformers is imported and none of this package's modules is
    halfway through its own import (one of them may be what imports transformers): after the import of
    transformers, and after each of this package's module imports, whichever completes the condition."""

    def __init__(self):
        self.importing = 0  # this package's module imports in progress (nested)

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers" and not fullname.startswith(__name__ + "."):
            return None
        spec = next((found for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec")
                     for found in [finder.find_spec(fullname, path, target)] if found is not None), None)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            load = spec.loader.exec_module

            def load_then_register(module):
                self.importing += 1
                try:
                    load(module)
                finally:
                    self.importing -= 1
                self.register_when_ready()

            spec.loader.exec_module = load_then_register
        return spec

    def register_when_ready(self):
        if self.importing or "transformers" not in sys.modules or self not in sys.meta_path:
            return
        sys.meta_path.remove(self)  # once
        try:
            _register_auto_classes()
        except ImportError:  # transformers without torch or timm: nothing of ours can load a model
            pass


if "transformers" in sys.modules:
    _register_auto_classes()
elif importlib.util.find_spec("transformers") is not None:  # none in a torch-free install (a Space's)
    sys.meta_path.insert(0, _RegisterWithTransformers())

__all__ = sorted(_LAZY)
