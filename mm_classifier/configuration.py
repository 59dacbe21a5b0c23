"""MultiModalConfig: the architecture and the labels of a classifier, nothing about training."""

from __future__ import annotations

import dataclasses

from transformers import PreTrainedConfig

MODALITIES = ("fusion", "image", "text")
# How captions are encoded (modeling.py builds each): "lstm" and "bag" learn a word vocabulary from the training
# captions; "transformers" is a pretrained transformers encoder whose configuration ``text_model_config`` holds.
TEXT_ENCODER_TYPES = ("lstm", "bag", "transformers")
TEXT_POOLINGS = ("mean", "pooler")
BAG_POOLINGS = ("tfidf", "mean")
# transformers' names. Multi-label: a sigmoid per concept, each decided by its threshold; single-label: a softmax over
# the classes, the most probable one predicted.
PROBLEM_TYPES = ("multi_label_classification", "single_label_classification")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _fail(field: str, value, expected: str):
    raise ValueError(f"MultiModalConfig.{field} = {value!r} is invalid: expected {expected}.")


class MultiModalConfig(PreTrainedConfig):
    """Configuration of :class:`~mm_classifier.MultiModalClassifier`.

    The first sentence of a field's entry below is also the help text of its command-line flag (``--image-size``
    for ``image_size``; ``mm_classifier.options``), whose default is the field's.

    Args:
        modality: ``"fusion"`` (photo and caption), ``"image"`` or ``"text"``.
        backbone: timm model name of the image encoder.
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``{"pad_type": "same"}`` for
            weights converted from TensorFlow).
        image_size: side of the square input image, in pixels.
        image_mean: the per-channel mean subtracted from pixels on the 0..1 scale (it must match the backbone's
            weights).
        image_std: the per-channel standard deviation that pixels are then divided by (it must match the
            backbone's weights).
        image_feature_blocks: pool the outputs of these backbone feature stages (-1 is the last) and concatenate
            them as the photo's features, instead of the pooled output of the backbone's head. The stages are, for
            an EfficientNet-family timm model (MobileNetV2 among them), its ``blocks``; for other families the
            modules timm's ``feature_info`` names, in order (ResNet: 0 the stem, 1 to 4 ``layer1`` to ``layer4``;
            ConvNeXt: its four stages; ViT: its blocks, whose patch tokens are read as a grid). None (default):
            the head's.
        image_local_projection: project the feature map at every position (a 1x1 convolution with ReLU) and
            average the projections, instead of projecting the averaged features. The chosen stages' maps are
            average-pooled to the coarsest one's grid. A cached frozen backbone then stores maps, not vectors.
        image_mirror_average: in inference mode, the image embedding is the mean of the photo's and its mirror
            image's (flipped left to right): test-time augmentation, at twice the image encoder's cost.
        image_embed_dim: size of the image embedding after the projection on the pooled backbone features.
        text_encoder_type: how captions are encoded: ``"lstm"`` (word embeddings and a BiLSTM, learnt from
            scratch), ``"bag"`` (a bag of words and hashed word bigrams over the whole text, fastText-style, learnt
            from scratch; see ``bag_pooling``) or ``"transformers"`` (a pretrained transformers encoder). (Not named
            ``text_encoder``: transformers reads that name, and ``text_config``, as a composite model's sub-config.)
        text_model_config: the transformers encoder's own configuration (``config.to_dict()``), so a saved folder
            rebuilds it without a download; its weights are part of ``model.safetensors``.
        text_model_name: where the transformers encoder's weights came from (a hub id or a folder), for the card.
        text_pooling: a transformers encoder's caption vector: ``"mean"`` (the attention-masked mean of the last
            hidden states, sentence-transformers' convention) or ``"pooler"`` (the model's own pooled output, the
            convention of CLIP's text tower).
        text_trainable_layers: how many of the transformers encoder's last layers train (with what follows them);
            0 keeps it frozen, so training computes each caption's vector once and caches it.
        vocab_size, pad_token_id: of the tokenizer (the word-level one, or the transformers encoder's own).
        max_length: captions are cut to this many tokens. Training sets it from the training texts' lengths.
        word_embed_dim: the lstm's and the bag's word embeddings.
        lstm_hidden_size, lstm_num_layers, lstm_bidirectional: the lstm encoder.
        bag_buckets: hash buckets for the bag's word bigrams (each bucket one embedding).
        bag_pooling: what the bag computes: ``"tfidf"`` (the text's TF-IDF vector, L2-normalised, times a table
            with one column per concept: a linear model of the text, as a TF-IDF logistic regression is; its
            scores are the text embedding) or ``"mean"`` (the IDF-weighted mean of ``word_embed_dim``-wide
            embeddings, then a projection to ``text_embed_dim``: the first bag, which folders saved before
            2026-12-07 hold).
        bag_l2: the L2 penalty on the bag's table in the training loss (a coefficient times the sum of its squared
            weights). Training sets it from the data, as strong as a logistic regression's with C = 4.
        text_embed_dim: size of the text embedding after the projection of the pooled caption vector (a
            ``"tfidf"`` bag's has one score per concept instead).
        fusion_type: how a fusion model combines the two embeddings: a key of ``mm_classifier.fusion.FUSION_TYPES``
            (``"concat"``: concatenation; ``"gated"``: a gated multimodal unit).
        fusion_hidden_sizes: hidden layer sizes of the classifier head on the fused (or single) embedding.
        dropout: dropout before each projection and hidden layer.
        modality_dropout: the probability (at most 0.5) that a fusion model loses its photo, and separately its
            caption, for a training example. So it learns to predict from either one alone.
        problem_type: ``"multi_label_classification"`` (each concept on its own: a sigmoid and a threshold per
            concept, any number predicted) or ``"single_label_classification"`` (exactly one class: a softmax,
            the most probable class predicted).
        thresholds: one decision threshold per concept (default 0.5 each; training tunes them). Multi-label only.
        pos_weight: optional per-concept positive weights of the BCE loss (multi-label).
        class_weights: optional per-class weights of the cross-entropy loss (single-label).
        calibration_temperatures: one per concept: each logit is divided by its temperature before the sigmoid
            (single-label: one temperature for every class, before the softmax). Fitted on the validation split
            after training; None: no calibration.
        calibration_biases: one per concept, added after the temperature (Platt scaling; multi-label only).
        id2label: concept names by index (sets the number of outputs).
        concept_words: the words that name each concept (concept -> words) in the captions labels were mined
            from, so evaluation on new data labels pairs the same way.
        min_votes: how many of a photo's other captions must name a concept for a (photo, caption) pair to have
            it. Kept with the concept words, so evaluation on new data labels pairs the same way.
    """

    model_type = "mm_classifier"

    modality: str = "fusion"
    backbone: str = "mobilenetv2_100"
    backbone_kwargs: dict | None = None
    image_size: int = 224
    image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN
    image_std: list[float] | tuple[float, ...] = IMAGENET_STD
    image_feature_blocks: list[int] | tuple[int, ...] | None = None
    image_local_projection: bool = False
    image_mirror_average: bool = False
    image_embed_dim: int = 256
    text_encoder_type: str = "lstm"
    text_model_config: dict | None = None
    text_model_name: str | None = None
    text_pooling: str = "mean"
    text_trainable_layers: int = 0
    vocab_size: int = 5000
    pad_token_id: int = 0
    max_length: int = 32
    word_embed_dim: int = 128
    lstm_hidden_size: int = 128
    lstm_num_layers: int = 1
    lstm_bidirectional: bool = True
    bag_buckets: int = 50000
    bag_pooling: str = "tfidf"
    bag_l2: float = 0.0
    text_embed_dim: int = 256
    fusion_type: str = "concat"
    fusion_hidden_sizes: list[int] | tuple[int, ...] = (256,)
    dropout: float = 0.3
    modality_dropout: float = 0.25
    thresholds: list[float] | None = None
    pos_weight: list[float] | None = None
    class_weights: list[float] | None = None
    calibration_temperatures: list[float] | None = None
    calibration_biases: list[float] | None = None
    concept_words: dict | None = None
    min_votes: int = 2
    # Registration: transformers' pipeline() reads this from a saved folder's config.json (its pipeline.py).
    custom_pipelines: dict = dataclasses.field(default_factory=lambda: {"multimodal-classification": {
        "impl": "pipeline.MultiModalClassificationPipeline", "pt": ["AutoModel"], "type": "multimodal"}})

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.label2id = {name: index for index, name in self.id2label.items()}
        self.problem_type = self.problem_type or PROBLEM_TYPES[0]
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        self.image_mean = [float(v) for v in self.image_mean]
        self.image_std = [float(v) for v in self.image_std]
        self.fusion_hidden_sizes = [int(v) for v in self.fusion_hidden_sizes]
        if self.image_feature_blocks is not None:
            self.image_feature_blocks = list(self.image_feature_blocks)
        if self.thresholds is None:
            self.thresholds = [0.5] * self.num_labels
        self._validate()

    def _validate(self) -> None:
        """Each field's value: the sizes, then the image, text, head and label fields; the first invalid one
        raises a ValueError naming it."""
        if self.modality not in MODALITIES:
            _fail("modality", self.modality, f"one of {MODALITIES}")
        for field in ("image_size", "image_embed_dim", "vocab_size", "max_length", "word_embed_dim",
                      "lstm_hidden_size", "lstm_num_layers", "bag_buckets", "text_embed_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(field, value, "a positive integer")
        self._validate_image()
        self._validate_text()
        self._validate_head()
        self._validate_labels()

    def _validate_image(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            _fail("backbone", self.backbone, "a timm model name")
        if self.image_size < 16:
            _fail("image_size", self.image_size, "at least 16 pixels")
        for field in ("image_mean", "image_std"):
            value = getattr(self, field)
            if len(value) != 3 or (field == "image_std" and min(value) <= 0):
                _fail(field, value, "three numbers (standard deviations > 0)")
        blocks = self.image_feature_blocks
        if blocks is not None and (
            not blocks or len(set(blocks)) != len(blocks)
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks)
        ):
            _fail("image_feature_blocks", blocks, "None or distinct stage indices (integers)")
        for field in ("image_local_projection", "image_mirror_average"):
            if not isinstance(getattr(self, field), bool):
                _fail(field, getattr(self, field), "True or False")

    def _validate_text(self) -> None:
        if self.text_encoder_type not in TEXT_ENCODER_TYPES:
            _fail("text_encoder_type", self.text_encoder_type, f"one of {TEXT_ENCODER_TYPES}")
        if self.text_encoder_type == "transformers" and not (
            isinstance(self.text_model_config, dict) and self.text_model_config.get("model_type")
        ):
            _fail("text_model_config", self.text_model_config, "a transformers configuration as a dict (model_type)")
        if self.text_pooling not in TEXT_POOLINGS:
            _fail("text_pooling", self.text_pooling, f"one of {TEXT_POOLINGS}")
        if self.bag_pooling not in BAG_POOLINGS:
            _fail("bag_pooling", self.bag_pooling, f"one of {BAG_POOLINGS}")
        if isinstance(self.bag_l2, bool) or not isinstance(self.bag_l2, (int, float)) or self.bag_l2 < 0:
            _fail("bag_l2", self.bag_l2, "a penalty, 0 or more")
        trainable = self.text_trainable_layers
        if isinstance(trainable, bool) or not isinstance(trainable, int) or trainable < 0:
            _fail("text_trainable_layers", trainable, "a layer count, 0 or more")
        if not 0 <= self.pad_token_id < self.vocab_size:
            _fail("pad_token_id", self.pad_token_id, f"an id below vocab_size={self.vocab_size}")

    def _validate_head(self) -> None:
        # Which names exist is fusion.py's business (a new method must not touch this file); build_fusion checks.
        if not isinstance(self.fusion_type, str) or not self.fusion_type:
            _fail("fusion_type", self.fusion_type, "the name of a fusion method, e.g. 'concat'")
        if any(h < 1 for h in self.fusion_hidden_sizes):
            _fail("fusion_hidden_sizes", self.fusion_hidden_sizes, "positive layer sizes")
        if not 0 <= self.dropout < 1:
            _fail("dropout", self.dropout, "a probability in [0, 1)")
        # The photo is hidden with probability p and, separately, the caption with p: at most half each.
        if not 0 <= self.modality_dropout <= 0.5:
            _fail("modality_dropout", self.modality_dropout, "a probability in [0, 0.5]")

    def _validate_labels(self) -> None:
        if len(self.thresholds) != self.num_labels or not all(0 <= t <= 1 for t in self.thresholds):
            _fail("thresholds", self.thresholds, f"{self.num_labels} numbers in [0, 1], one per concept")
        self.thresholds = [float(t) for t in self.thresholds]
        if self.problem_type not in PROBLEM_TYPES:
            _fail("problem_type", self.problem_type, f"one of {PROBLEM_TYPES}")
        if self.single_label and self.num_labels < 2:
            _fail("problem_type", self.problem_type, "multi_label_classification: a single-label model needs two "
                  "classes or more")
        for field in ("pos_weight", "class_weights", "calibration_temperatures"):
            value = getattr(self, field)
            if value is not None and (len(value) != self.num_labels or not all(w > 0 for w in value)):
                _fail(field, value, f"{self.num_labels} positive numbers, one per concept")
        if self.calibration_biases is not None and (
            len(self.calibration_biases) != self.num_labels or self.single_label
        ):
            _fail("calibration_biases", self.calibration_biases, f"{self.num_labels} numbers, one per concept, and "
                  "None for a single-label model (a bias per class would change its most probable class)")
        if self.single_label and self.pos_weight is not None:
            _fail("pos_weight", self.pos_weight, "None for a single-label model (class_weights weigh its classes)")
        if not self.single_label and self.class_weights is not None:
            _fail("class_weights", self.class_weights, "None for a multi-label model (pos_weight weighs its concepts)")
        if self.concept_words is not None and set(self.concept_words) != set(self.id2label.values()):
            _fail("concept_words", sorted(self.concept_words), f"words for exactly the concepts {self.concepts}")
        if isinstance(self.min_votes, bool) or not isinstance(self.min_votes, int) or self.min_votes < 1:
            _fail("min_votes", self.min_votes, "a positive integer")
        if len(set(self.id2label.values())) != len(self.id2label):
            _fail("id2label", self.id2label, "unique concept names")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # A bag saved before bag_pooling existed is the first one, the mean of embeddings.
        if config_dict.get("text_encoder_type") == "bag" and "bag_pooling" not in config_dict:
            config_dict = {**config_dict, "bag_pooling": "mean"}
        return super().from_dict(config_dict, **kwargs)

    @property
    def linear_bag(self) -> bool:
        """The text encoder is a ``"tfidf"`` bag: a linear model whose concept scores are the text embedding."""
        return self.text_encoder_type == "bag" and self.bag_pooling == "tfidf"

    @property
    def text_output_dim(self) -> int:
        """The width of the text embedding: ``text_embed_dim``, or a ``"tfidf"`` bag's one score per concept."""
        return self.num_labels if self.linear_bag else self.text_embed_dim

    @property
    def concepts(self) -> list[str]:
        """Concept names in output order."""
        id2label = self.id2label  # once: each read of a config attribute goes through transformers' lookup
        return [id2label[i] for i in range(len(id2label))]

    @property
    def single_label(self) -> bool:
        """Exactly one class per input (softmax), rather than any number of concepts (sigmoids)."""
        return self.problem_type == "single_label_classification"

    @property
    def uses_image(self) -> bool:
        return self.modality in ("fusion", "image")

    @property
    def uses_text(self) -> bool:
        return self.modality in ("fusion", "text")


MultiModalConfig.register_for_auto_class()  # a saved config.json names this file in its auto_map
