"""The classifier: a timm image encoder and a caption encoder (text_encoders.py), fused, as a PreTrainedModel."""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass

import timm
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import MultiModalConfig
from .errors import MMClassifierError
from .fusion import build_fusion
from .text_encoders import TEXT_ENCODERS, BagTextEncoder

logger = logging.getLogger(__name__)


@dataclass
class MultiModalOutput(ModelOutput):
    """Output of :class:`MultiModalClassifier`.

    Attributes:
        loss: the training loss (:meth:`MultiModalClassifier.loss`), when ``labels`` were given.
        logits: (B, num_concepts) one logit per concept, uncalibrated (:meth:`MultiModalClassifier.probabilities`
            turns them into probabilities).
        image_embeds: (B, image_embed_dim), or None for a text-only model.
        text_embeds: (B, text_embed_dim), or None for an image-only model.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


class ImageEncoder(nn.Module):
    """timm backbone -> photo features -> projection to ``(B, image_embed_dim)``, on timm's generic feature API
    (``feature_info``, ``forward_intermediates``, ``forward_features`` / ``forward_head``), so that EfficientNets
    and MobileNets, ResNets, ConvNeXts and ViTs all serve.

    The backbone's feature stages (:attr:`stages`) are the modules timm's ``feature_info`` names, in forward
    order (ResNet: the stem's activation and ``layer1`` to ``layer4``; ConvNeXt: its four stages; ViT: every
    block, whose patch tokens are read as a grid); a backbone whose ``forward_intermediates`` can return every
    block (``extra_blocks``: the EfficientNet family, MobileNetV2 among them) has every block of its ``blocks``
    as a stage. ``config.image_feature_blocks`` index these stages: the features are then their pooled maps
    instead of the head's. The whole backbone trains (``trainable_blocks == num_stages``) until :meth:`freeze`
    keeps only its last stages trainable.
    """

    def __init__(self, config: MultiModalConfig):
        super().__init__()
        # pretrained=False: from_pretrained and tests must never download; weights come from the checkpoint
        # or from load_pretrained_backbone().
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_kwargs)
        self.stages, self.every_block = _feature_stages(self.backbone)
        self.local_projection = config.image_local_projection
        self.mirror_average = config.image_mirror_average
        self.feature_blocks: list[int] | None = None
        if config.image_feature_blocks is not None:
            self.feature_blocks = self._resolve_blocks(config.image_feature_blocks)
        self.projection = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(self._feature_width(config.image_size), config.image_embed_dim),
            nn.ReLU(),
        )
        self.trainable_blocks = self.num_stages
        self._freeze_unused_layers()

    # -------------------------------------------------------------------------------- backbone layout

    @property
    def num_stages(self) -> int:
        """The stages ``forward_intermediates`` numbers: :attr:`stages`, after the stem for the EfficientNet
        family (its stage 0)."""
        return len(self.stages) + self.every_block

    def _resolve_blocks(self, blocks) -> list[int]:
        n = len(self.stages)
        if not all(-n <= b < n for b in blocks):
            raise MMClassifierError(
                f"image_feature_blocks {list(blocks)}: the backbone's feature stages are 0 to {n - 1} (or -{n} to "
                f"-1): {', '.join(self.stages)}."
            )
        return sorted(b % n for b in blocks)

    def _parameters_after(self, stage: str, inclusive: bool) -> list[nn.Parameter]:
        """The backbone's parameters in the modules registered after the stage module named ``stage`` (and in it,
        if ``inclusive``): timm registers a model's modules in forward order, its head after its stages."""
        names = [name for name, _ in self.backbone.named_modules()]
        start = names.index(stage)
        if inclusive:
            later = set(names[start:])
        else:
            later = {name for name in names[start + 1 :] if not name.startswith(stage + ".")}
        return [p for name, p in self.backbone.named_parameters() if name.rpartition(".")[0] in later]

    def _freeze_unused_layers(self) -> None:
        """With chosen feature stages, the later stages and the head never run: they must not ask for gradients
        (multi-process training would wait for theirs forever). Their weights stay, so checkpoints still load
        (which is why timm's ``prune_intermediate_layers`` is not used)."""
        if self.feature_blocks is not None:
            for parameter in self._parameters_after(self.stages[self.feature_blocks[-1]], inclusive=False):
                parameter.requires_grad_(False)

    @torch.no_grad()
    def _feature_width(self, image_size: int) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        features = self.backbone_features(torch.zeros(1, 3, image_size, image_size))
        self.backbone.train(was_training)
        if features.dim() == 3:
            raise MMClassifierError(
                "image_local_projection projects a feature map, but this backbone's final features are tokens; "
                "choose its blocks with image_feature_blocks, whose patch tokens are read as a grid."
            )
        return features.shape[1]

    # -------------------------------------------------------------------------------- features

    def feature_maps(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the backbone outputs the features are pooled from: with ``image_feature_blocks`` the
        chosen stages' maps, (B, C_i, h_i, w_i) each (a ViT's patch tokens as a grid, its class token dropped),
        running no further than the last; else ``forward_features``' output alone (a map, or a ViT's tokens)."""
        if self.feature_blocks is None:
            return [self.backbone.forward_features(pixel_values)]
        # forward_intermediates numbers the stages; the EfficientNet family's stem is its stage 0.
        indices = [b + self.every_block for b in self.feature_blocks]
        every_block = {"extra_blocks": True} if self.every_block else {}
        return self.backbone.forward_intermediates(
            pixel_values, indices=indices, stop_early=True, intermediates_only=True, **every_block
        )

    def pool(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`feature_maps`' output -> the features the projection reads: the head's pooled output (B, F), or
        the chosen stages' maps pooled and concatenated; with ``image_local_projection`` unpooled maps
        (B, F, h, w), the chosen stages' average-pooled to the coarsest one's grid."""
        if self.feature_blocks is None:
            return maps[0] if self.local_projection else self.backbone.forward_head(maps[0])
        if not self.local_projection:
            return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        grid = maps[-1].shape[-2:]
        return torch.cat([_average_to_grid(m, grid) for m in maps], dim=1)

    def backbone_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the features the projection reads; a wholly frozen backbone's are what training
        caches (``frozen_features``)."""
        return self.pool(self.feature_maps(pixel_values))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled (B, F) features, or a (B, F, h, w) map projected at every position and then averaged."""
        if features.dim() == 2:
            return self.projection(features)
        return self.projection(features.permute(0, 2, 3, 1)).mean(dim=(1, 2))

    # -------------------------------------------------------------------------------- freezing

    def freeze(self, trainable_blocks: int) -> None:
        """Freeze the backbone except its last ``trainable_blocks`` :attr:`stages` and everything after them (head
        convolution, final norm); 0 freezes all of it, and at most ``num_stages - 1`` leaves the first stage frozen
        (an EfficientNet's or a ResNet's stem; a ConvNeXt's or a ViT's first stage and the stem or patch embedding
        before it).

        Only a wholly frozen backbone's features are cached (:meth:`backbone_features`). Trainable stages train on
        pixels, the frozen stages before them running on every batch without gradients: that costs their forward
        pass on every photo in every epoch, which caching their outputs would save once, but the trainable stages
        see the photos' random flips.
        """
        if not 0 <= trainable_blocks < self.num_stages:
            raise MMClassifierError(
                f"trainable_blocks must be between 0 and {self.num_stages - 1}, got {trainable_blocks}."
            )
        self.trainable_blocks = trainable_blocks
        self.backbone.requires_grad_(False)
        if trainable_blocks:
            for parameter in self._parameters_after(self.stages[-trainable_blocks], inclusive=True):
                parameter.requires_grad_(True)
            self._freeze_unused_layers()
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        # Fine-tuning a (partly) frozen pretrained backbone: every batch norm keeps its statistics, trainable
        # blocks too. Small CPU batches would corrupt them, and weights with batch norm folded into the
        # convolutions (TFLite conversions) have identity statistics that batch statistics would destroy.
        # Their scale and shift still train. A backbone that trains whole (from scratch) uses batch statistics.
        if mode and self.trainable_blocks != self.num_stages:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # -------------------------------------------------------------------------------- forward

    def forward(self, pixel_values=None, frozen_features=None, mirrored_frozen_features=None) -> torch.Tensor:
        """(B, 3, H, W) pixels, or a wholly frozen backbone's cached :meth:`backbone_features`, -> (B, image_embed_dim).

        Test-time mirror averaging (``config.image_mirror_average``, inference mode): the embedding is the mean of
        the photo's and its mirror image's (flipped left to right), at twice the image encoder's cost. From pixels
        both views go through the backbone in one batch (:meth:`views`, :meth:`embed`); from a cache both views'
        features must be given, ``mirrored_frozen_features`` being the mirror images' (one view alone is embedded
        as it is).
        """
        if frozen_features is None:
            return self.embed(self.feature_maps(self.views(pixel_values)))
        embeds = self.project(frozen_features)
        if not self.averages_mirrors or mirrored_frozen_features is None:
            return embeds
        return (embeds + self.project(mirrored_frozen_features)) / 2

    @property
    def averages_mirrors(self) -> bool:
        """Whether the embedding is the mean of the photo's and its mirror image's: in inference mode only."""
        return self.mirror_average and not self.training

    def views(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The images the embedding reads: the photos (B, 3, H, W), and when averaging mirror images, their mirror
        images after them (2B, 3, H, W)."""
        if not self.averages_mirrors:
            return pixel_values
        both = torch.cat([pixel_values, pixel_values.flip(-1)])
        if pixel_values.is_contiguous(memory_format=torch.channels_last):
            both = both.contiguous(memory_format=torch.channels_last)
        return both

    def embed(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`feature_maps` of :meth:`views` -> (B, image_embed_dim), the mean of the two views' when averaging
        mirror images."""
        embeds = self.project(self.pool(maps))
        if self.averages_mirrors:
            return embeds.view(2, -1, embeds.shape[-1]).mean(0)  # -1: the batch stays dynamic in an ONNX graph
        return embeds


def _feature_stages(backbone: nn.Module) -> tuple[list[str], bool]:
    """A timm backbone's feature stages: their modules' names in forward order, and whether they are every block
    of a backbone whose ``forward_intermediates`` numbers the stem 0 and each block after it (its
    ``extra_blocks``: the EfficientNet family). Otherwise they are the modules ``feature_info`` names, one per
    index of ``forward_intermediates``."""
    names = [info["module"] for info in backbone.feature_info]
    if "extra_blocks" not in inspect.signature(backbone.forward_intermediates).parameters:
        return names, False
    # feature_info names the last block of each resolution (MobileNetV2's blocks.0, 1, 2, 4 and 6); every block
    # of the sequence they belong to is a stage.
    sequence = names[-1].rpartition(".")[0]
    return [f"{sequence}.{i}" for i in range(len(backbone.get_submodule(sequence)))], True


class ConceptBias(nn.Module):
    """A text-only ``"tfidf"`` bag's classifier: each concept's score plus its intercept, learnt at the bag's rate."""

    LEARNING_RATE_SCALES = {"bias": BagTextEncoder.LEARNING_RATE_SCALES["embedding."]}

    def __init__(self, num_labels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bias


class MultiModalClassifier(PreTrainedModel):
    """Multi-label concept classifier on a photo, a caption, or both.

    ``encode_image`` / ``encode_text`` / ``classify`` can be called on their own (feature caching, ablations);
    ``forward`` chains them and computes the loss when ``labels`` are given.
    """

    config_class = MultiModalConfig
    base_model_prefix = "mm_classifier"
    main_input_name = "pixel_values"

    def __init__(self, config: MultiModalConfig):
        super().__init__(config)
        self.image_encoder = ImageEncoder(config) if config.uses_image else None
        self.text_encoder = TEXT_ENCODERS[config.text_encoder_type](config) if config.uses_text else None
        # A fusion model combines the two embeddings (fusion.py); a single-modality model reads its one embedding.
        self.fusion = build_fusion(config) if config.modality == "fusion" else None
        if self.fusion is not None:
            in_features = self.fusion.output_dim
        else:
            in_features = config.image_embed_dim if config.uses_image else config.text_output_dim
        layers: list[nn.Module] = []
        if config.modality == "text" and config.linear_bag:
            # A "tfidf" bag's scores are a linear model's logits but for their intercepts: hidden layers, even
            # one linear layer mixing the concepts, only overfit (docs/experiments.md).
            layers.append(ConceptBias(config.num_labels))
        else:
            for hidden in config.fusion_hidden_sizes:
                layers += [nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
                in_features = hidden
            layers.append(nn.Linear(in_features, config.num_labels))
        self.classifier = nn.Sequential(*layers)
        self.frozen_encoders: set[str] = set()  # training-time only; see freeze_encoders
        self.post_init()

    def _init_weights(self, module):
        # Every module is initialised by its own constructor (timm's scheme for the backbone, PyTorch's
        # defaults elsewhere); re-initialising here would undo timm's.
        pass

    # -------------------------------------------------------------------------------- parts

    def encode_image(self, pixel_values=None, frozen_features=None, mirrored_frozen_features=None) -> torch.Tensor:
        """(B, 3, H, W) pixels, or the cached output of the backbone's frozen part -> (B, image_embed_dim).

        See :meth:`ImageEncoder.forward` (and its test-time mirror averaging).
        """
        if self.image_encoder is None:
            raise MMClassifierError(f"This is a {self.config.modality}-only model: it has no image encoder.")
        return self.image_encoder(pixel_values, frozen_features, mirrored_frozen_features)

    def encode_text(self, input_ids=None, attention_mask=None, caption_features=None) -> torch.Tensor:
        """(B, T) token ids, or a transformers encoder's cached ``caption_features`` (B, hidden), ->
        (B, text_output_dim)."""
        if self.text_encoder is None:
            raise MMClassifierError(f"This is a {self.config.modality}-only model: it has no text encoder.")
        if caption_features is not None:
            return self.text_encoder(caption_features=caption_features)
        return self.text_encoder(input_ids, attention_mask)

    def classify(self, image_embeds=None, text_embeds=None) -> torch.Tensor:
        """Embeddings -> (B, num_concepts) logits. A fusion model treats a missing modality as zeros."""
        if self.fusion is None:
            embeds = image_embeds if self.config.uses_image else text_embeds
            if embeds is None:
                raise MMClassifierError(f"The {self.config.modality} model needs a {self.config.modality} input.")
            return self.classifier(embeds)
        if image_embeds is None:
            image_embeds = self._zeros(text_embeds, "image")
        if text_embeds is None:
            text_embeds = self._zeros(image_embeds, "text")
        return self.classifier(self.fusion(image_embeds, text_embeds))

    def _zeros(self, other: torch.Tensor | None, modality: str) -> torch.Tensor:
        if other is None:
            raise MMClassifierError("Give a photo, a caption, or both: the model got neither.")
        size = self.config.image_embed_dim if modality == "image" else self.config.text_output_dim
        return other.new_zeros(other.shape[0], size)

    # -------------------------------------------------------------------------------- forward

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        frozen_features: torch.Tensor | None = None,
        mirrored_frozen_features: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        caption_features: torch.Tensor | None = None,
        **kwargs,
    ) -> MultiModalOutput:
        """Predict concept logits from a photo (``pixel_values`` or cached ``frozen_features``) and/or a caption.

        Args:
            pixel_values: (B, 3, H, W) normalised images.
            input_ids, attention_mask: (B, T) caption tokens.
            labels: (B, num_concepts) multi-hot targets (single-label: one-hot, or (B,) class indices); when
                given, ``loss`` is computed.
            frozen_features: cached output of the backbone's frozen part (:meth:`ImageEncoder.frozen_features`),
                instead of ``pixel_values``.
            mirrored_frozen_features: the same for the photos' mirror images (test-time mirror averaging).
            image_embeds: (B, image_embed_dim) from :meth:`encode_image`, instead of either (a frozen image
                encoder's embeddings can be computed once per photo).
            text_embeds: (B, text_embed_dim) from :meth:`encode_text`, instead of ``input_ids`` (likewise once
                per caption for a frozen text encoder).
            caption_features: (B, hidden) a frozen transformers encoder's pooled caption vectors
                (:meth:`PretrainedTextEncoder.caption_features`), instead of ``input_ids``.
        """
        has_image = pixel_values is not None or frozen_features is not None or image_embeds is not None
        has_text = input_ids is not None or text_embeds is not None or caption_features is not None
        if not has_image and not has_text:
            raise MMClassifierError("Give a photo, a caption, or both: the model got neither.")
        if not self.config.uses_image:
            image_embeds = None
        elif has_image and image_embeds is None:
            image_embeds = self.encode_image(pixel_values, frozen_features, mirrored_frozen_features)  # (B, Di)
        if not self.config.uses_text:
            text_embeds = None
        elif has_text and text_embeds is None:
            text_embeds = self.encode_text(input_ids, attention_mask, caption_features)  # (B, Dt)
        if self.training:
            # A frozen encoder runs in inference mode; its embedding gets the dropout its own layers would apply.
            if image_embeds is not None and "image" in self.frozen_encoders:
                image_embeds = nn.functional.dropout(image_embeds, self.config.dropout, training=True)
            if text_embeds is not None and "text" in self.frozen_encoders:
                text_embeds = nn.functional.dropout(text_embeds, self.config.dropout, training=True)
            if self.config.modality == "fusion" and self.config.modality_dropout > 0:
                image_embeds, text_embeds = self._drop_modalities(image_embeds, text_embeds)
        logits = self.classify(image_embeds, text_embeds)  # (B, C)

        loss = None if labels is None else self.loss(logits, labels)
        if loss is not None and self.training and isinstance(self.text_encoder, BagTextEncoder):
            loss = loss + self.text_encoder.penalty()
        return MultiModalOutput(loss=loss, logits=logits, image_embeds=image_embeds, text_embeds=text_embeds)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of (B, C) logits: multi-label, BCE against (B, C) 0/1 (or mean) targets, each concept's
        positives weighted by ``config.pos_weight``; single-label, cross-entropy against (B,) class indices or (B, C)
        one-hot rows (the collator's batches), weighted by ``config.class_weights``."""
        weights = self.config.class_weights if self.config.single_label else self.config.pos_weight
        if weights is not None:
            weights = torch.tensor(weights, device=logits.device, dtype=logits.dtype)
        if self.config.single_label:
            classes = labels.long() if labels.dim() == 1 else labels.argmax(dim=-1)
            return nn.functional.cross_entropy(logits, classes, weight=weights)
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weights)

    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """(B, C) logits -> (B, C) probabilities: calibrated (divided by ``config.calibration_temperatures``, plus
        ``config.calibration_biases``; unless ``calibrated=False``), then a sigmoid per concept (multi-label) or a
        softmax over the classes (single-label)."""
        logits, config = logits.float(), self.config  # each config read goes through transformers' lookup
        temperatures = config.calibration_temperatures if calibrated else None
        biases = config.calibration_biases if calibrated else None
        if temperatures is not None:
            logits = logits / torch.tensor(temperatures, device=logits.device)
        if biases is not None:
            logits = logits + torch.tensor(biases, device=logits.device)
        return logits.softmax(dim=-1) if config.single_label else torch.sigmoid(logits)

    def _drop_modalities(self, image_embeds, text_embeds):
        """Zero the photo or the caption of a random subset of examples (never both of one example)."""
        if image_embeds is None or text_embeds is None:
            return image_embeds, text_embeds
        p = self.config.modality_dropout
        batch = image_embeds.shape[0]
        draw = torch.rand(batch, device=image_embeds.device)
        drop_image = (draw < p).unsqueeze(-1)  # (B, 1)
        drop_text = ((draw >= p) & (draw < 2 * p)).unsqueeze(-1)
        return image_embeds.masked_fill(drop_image, 0.0), text_embeds.masked_fill(drop_text, 0.0)

    # -------------------------------------------------------------------------------- freezing

    def freeze_encoders(self, image: bool = False, text: bool = False) -> None:
        """Keep whole encoders fixed while the rest trains: no gradients, and inference mode (no dropout,
        batch-norm statistics kept) even in ``train()``.

        The fusion stage uses this to train only the fusion layers on top of the two single-modality
        encoders trained before it.
        """
        for name, wanted, encoder in (("image", image, self.image_encoder), ("text", text, self.text_encoder)):
            if not wanted:
                continue
            if encoder is None:
                raise MMClassifierError(f"This {self.config.modality} model has no {name} encoder to freeze.")
            encoder.requires_grad_(False)
            self.frozen_encoders.add(name)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in getattr(self, "frozen_encoders", ()):  # nn.Module.__init__ may call train() before it exists
            (self.image_encoder if name == "image" else self.text_encoder).eval()
        return self

    # -------------------------------------------------------------------------------- backbone

    def freeze_backbone(self, trainable_blocks: int = 0) -> None:
        """Freeze the image backbone except its last ``trainable_blocks`` feature stages (0: frozen entirely); see
        :meth:`ImageEncoder.freeze`."""
        if self.image_encoder is None:
            raise MMClassifierError("A text-only model has no backbone to freeze.")
        self.image_encoder.freeze(trainable_blocks)

    def load_pretrained_backbone(self, weights: str | os.PathLike | None = None) -> None:
        """Load ImageNet-style backbone weights.

        Args:
            weights: a local safetensors state dict of the timm backbone (classifier weights are ignored), or
                None to fetch timm's own pretrained weights from the hub (needs internet).
        """
        if self.image_encoder is None:
            raise MMClassifierError("A text-only model has no backbone to load weights into.")
        backbone = self.image_encoder.backbone
        if weights is None:
            state_dict = _download_timm_weights(self.config)
        else:
            from safetensors.torch import load_file

            if not os.path.isfile(weights):
                raise MMClassifierError(f"Backbone weights file {weights} does not exist.")
            try:
                state_dict = load_file(str(weights))
            except Exception as err:
                raise MMClassifierError(f"Cannot read backbone weights {weights} as safetensors: {err}") from err
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        missing, unexpected = backbone.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise MMClassifierError(
                f"Backbone weights do not fit {self.config.backbone} with {self.config.backbone_kwargs}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]}). Check --backbone and its creation arguments (pad_type)."
            )
        logger.info("Loaded %d backbone tensors into %s", len(state_dict), self.config.backbone)


def _average_to_grid(feature_map: torch.Tensor, grid) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *grid), adaptive average pooling; where the grid divides the map (a backbone's
    stages halve it), as the fixed windows that adaptive pooling then uses, which ONNX export can write."""
    height, width = (int(side) for side in feature_map.shape[-2:])
    rows, columns = (int(side) for side in grid)
    if height % rows or width % columns:
        return nn.functional.adaptive_avg_pool2d(feature_map, (rows, columns))
    return nn.functional.avg_pool2d(feature_map, (height // rows, width // columns))


def _download_timm_weights(config: MultiModalConfig) -> dict:
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise MMClassifierError(
            f"Pretrained weights for {config.backbone} must be downloaded, but HF_HUB_OFFLINE is set. "
            "Pass a local safetensors file instead (train.py --backbone-weights PATH) or train without "
            "pretrained weights (--no-pretrained)."
        )
    try:
        pretrained = timm.create_model(config.backbone, pretrained=True, num_classes=0, **config.backbone_kwargs)
    except Exception as err:
        raise MMClassifierError(
            f"Could not download pretrained weights for {config.backbone} ({type(err).__name__}: {err}). "
            "Offline? Pass a local safetensors file (--backbone-weights PATH) or use --no-pretrained."
        ) from err
    return pretrained.state_dict()


MultiModalClassifier.register_for_auto_class("AutoModel")  # a saved config.json names this file in its auto_map
