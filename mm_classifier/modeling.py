"""The fusion classifier: timm image encoder, Embedding + LSTM text encoder, concatenation + MLP head."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import timm
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import MultiModalConfig
from .errors import MMClassifierError
from .fusion import build_fusion

logger = logging.getLogger(__name__)


@dataclass
class MultiModalOutput(ModelOutput):
    """Output of :class:`MultiModalClassifier`.

    Attributes:
        loss: BCE-with-logits loss, when ``labels`` were given.
        logits: (B, num_concepts) one logit per concept.
        image_embeds: (B, image_embed_dim), or None for a text-only model.
        text_embeds: (B, text_embed_dim), or None for an image-only model.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


class ImageEncoder(nn.Module):
    """timm backbone -> photo features -> projection to ``(B, image_embed_dim)``.

    The backbone is an EfficientNet-family timm model (MobileNetV2 among them). Training may freeze all but its
    last ``trainable_blocks`` blocks (and the head convolution): :meth:`frozen_features` is then the output of
    the frozen part, which training caches, and :meth:`trainable_features` the rest. ``trainable_blocks`` counts
    the blocks of ``backbone.blocks``; :attr:`num_stages` (the stem plus every block) means the whole backbone
    trains, as it does until :meth:`freeze` is called. With ``config.image_feature_blocks`` the features are
    the pooled outputs of those blocks, taken through timm's ``forward_intermediates``, instead of the head's.
    """

    def __init__(self, config: MultiModalConfig):
        super().__init__()
        # pretrained=False: from_pretrained and tests must never download; weights come from the checkpoint
        # or from load_pretrained_backbone().
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_kwargs)
        self.local_projection = config.image_local_projection
        self.mirror_average = config.image_mirror_average
        self.feature_blocks: list[int] | None = None
        if config.image_feature_blocks is not None:
            self.feature_blocks = self._resolve_blocks(config.image_feature_blocks)
        if self.feature_blocks is None and not self.local_projection:
            # Some timm heads (MobileNetV3) widen the pooled features beyond num_features.
            width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        else:
            width = self._feature_width()
        self.projection = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(width, config.image_embed_dim), nn.ReLU()
        )
        self.trainable_blocks = self.num_stages
        self._freeze_unused_layers()

    # -------------------------------------------------------------------------------- backbone layout

    @property
    def splits_into_blocks(self) -> bool:
        """Whether the backbone can be cut between blocks (feature blocks, partial freezing): EfficientNet-family."""
        return isinstance(self.backbone, EfficientNet)

    @property
    def num_blocks(self) -> int:
        return len(self.backbone.blocks) if self.splits_into_blocks else 0

    @property
    def num_stages(self) -> int:
        """timm's feature stages: the stem (index 0) and one per block (index k: the output of block k - 1)."""
        return self.num_blocks + 1

    def _resolve_blocks(self, blocks) -> list[int]:
        if not self.splits_into_blocks:
            raise MMClassifierError(
                f"image_feature_blocks needs an EfficientNet-family timm backbone (MobileNetV2, EfficientNet); "
                f"{type(self.backbone).__name__} cannot be cut between blocks."
            )
        n = self.num_blocks
        if not all(-n <= b < n for b in blocks):
            raise MMClassifierError(
                f"image_feature_blocks {list(blocks)}: the backbone has blocks 0 to {n - 1} (or -{n} to -1)."
            )
        return sorted(b % n for b in blocks)

    def _freeze_unused_layers(self) -> None:
        """With chosen feature blocks, the later blocks and the head never run: they must not ask for gradients
        (multi-process training would wait for theirs forever). Their weights stay, so checkpoints still load."""
        if self.feature_blocks is not None:
            b = self.backbone
            for module in (*b.blocks[self.feature_blocks[-1] + 1 :], b.conv_head, b.bn2):
                module.requires_grad_(False)

    @torch.no_grad()
    def _feature_width(self) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        width = self.backbone_features(torch.zeros(1, 3, 64, 64)).shape[1]
        self.backbone.train(was_training)
        return width

    # -------------------------------------------------------------------------------- features

    def _intermediates(self, pixel_values: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
        """Outputs of timm feature stages (0: the stem; k: block k - 1), running no further than the last."""
        return self.backbone.forward_intermediates(
            pixel_values, indices=stages, extra_blocks=True, stop_early=True, intermediates_only=True
        )

    def _pool(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The chosen blocks' maps -> pooled and concatenated (B, F); with a local projection, the maps average-
        pooled to the coarsest one's grid and concatenated, (B, F, h, w)."""
        if not self.local_projection:
            return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        grid = maps[-1].shape[-2:]
        return torch.cat([nn.functional.adaptive_avg_pool2d(m, grid) for m in maps], dim=1)

    def backbone_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the features the projection reads: the pooled head output (B, F), or the chosen
        blocks' pooled outputs; with ``image_local_projection`` unpooled maps (B, F, h, w)."""
        if self.feature_blocks is not None:
            return self._pool(self._intermediates(pixel_values, [b + 1 for b in self.feature_blocks]))
        return self.backbone.forward_features(pixel_values) if self.local_projection else self.backbone(pixel_values)

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen part of the backbone: (B, 3, H, W) -> what :meth:`trainable_features` continues from.

        With the whole backbone frozen, that is :meth:`backbone_features`; else the output of the last frozen
        block (B, C, h, w).
        """
        if self.trainable_blocks == 0:
            return self.backbone_features(pixel_values)
        if self.trainable_blocks == self.num_stages:
            return pixel_values
        return self._intermediates(pixel_values, [self.num_blocks - self.trainable_blocks])[0]

    def trainable_features(self, frozen: torch.Tensor) -> torch.Tensor:
        """The trainable part: :meth:`frozen_features`' output -> :meth:`backbone_features`' output."""
        if self.trainable_blocks == 0:
            return frozen
        if self.trainable_blocks == self.num_stages:
            return self.backbone_features(frozen)
        b, first = self.backbone, self.num_blocks - self.trainable_blocks
        if self.feature_blocks is not None:
            # The frozen part's output is itself a chosen block's output when the first trainable block follows it.
            maps = [frozen] if first - 1 in self.feature_blocks else []
            x = frozen
            for index in range(first, self.feature_blocks[-1] + 1):
                x = b.blocks[index](x)
                if index in self.feature_blocks:
                    maps.append(x)  # (B, C_index, h_index, w_index)
            return self._pool(maps)
        x = b.bn2(b.conv_head(b.blocks[first:](frozen)))
        return x if self.local_projection else b.forward_head(x)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled (B, F) features, or a (B, F, h, w) map projected at every position and then averaged."""
        if features.dim() == 2:
            return self.projection(features)
        return self.projection(features.permute(0, 2, 3, 1)).mean(dim=(1, 2))

    # -------------------------------------------------------------------------------- freezing

    def freeze(self, trainable_blocks: int) -> None:
        """Freeze the backbone except its last ``trainable_blocks`` blocks and head convolution (0: all of it)."""
        if trainable_blocks and not self.splits_into_blocks:
            raise MMClassifierError(
                f"trainable_blocks={trainable_blocks} needs an EfficientNet-family timm backbone; "
                f"{type(self.backbone).__name__} cannot be cut between blocks. Use 0 (frozen) or train it whole."
            )
        if not 0 <= trainable_blocks <= self.num_blocks:
            raise MMClassifierError(
                f"trainable_blocks must be between 0 and {self.num_blocks}, got {trainable_blocks}."
            )
        first_trainable = self.num_blocks - trainable_blocks
        if trainable_blocks and self.feature_blocks and self.feature_blocks[0] < first_trainable - 1:
            raise MMClassifierError(
                f"image_feature_blocks {self.feature_blocks} reach into the frozen blocks whose output is cached; "
                f"with trainable_blocks={trainable_blocks} they must be {first_trainable - 1} or later."
            )
        self.trainable_blocks = trainable_blocks
        self.backbone.requires_grad_(False)
        if trainable_blocks:
            b = self.backbone
            for module in (*b.blocks[first_trainable:], b.conv_head, b.bn2):
                module.requires_grad_(True)
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
        """(B, 3, H, W) pixels, or cached :meth:`frozen_features`, -> (B, image_embed_dim).

        ``mirrored_frozen_features``: the cached frozen features of the photos' mirror images, for the
        test-time mirror averaging below (ignored in training mode).
        """
        if self.mirror_average and not self.training:
            return self.mirror_averaged(pixel_values, frozen_features, mirrored_frozen_features)
        if frozen_features is None:
            return self.project(self.backbone_features(pixel_values))
        return self.project(self.trainable_features(frozen_features))

    def mirror_averaged(self, pixel_values=None, frozen_features=None, mirrored_frozen_features=None) -> torch.Tensor:
        """Test-time mirror averaging (``config.image_mirror_average``, inference mode): the mean of the photo's
        and its mirror image's (flipped left to right) embeddings, at twice the image encoder's cost.

        From pixels both views go through the backbone in one batch; from a cache both views' frozen features
        must be given (one view alone is embedded as it is).
        """
        if frozen_features is not None:
            embeds = self.project(self.trainable_features(frozen_features))
            if mirrored_frozen_features is None:
                return embeds
            return (embeds + self.project(self.trainable_features(mirrored_frozen_features))) / 2
        both = torch.cat([pixel_values, pixel_values.flip(-1)])
        if pixel_values.is_contiguous(memory_format=torch.channels_last):
            both = both.contiguous(memory_format=torch.channels_last)
        return self.project(self.backbone_features(both)).view(2, len(pixel_values), -1).mean(0)


class TextEncoder(nn.Module):
    """Word embeddings -> (Bi)LSTM over packed sequences -> masked mean pool -> projection."""

    def __init__(self, config: MultiModalConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.word_embed_dim, padding_idx=config.pad_token_id)
        self.lstm = nn.LSTM(
            config.word_embed_dim,
            config.lstm_hidden_size,
            num_layers=config.lstm_num_layers,
            batch_first=True,
            bidirectional=config.lstm_bidirectional,
            dropout=config.dropout if config.lstm_num_layers > 1 else 0.0,
        )
        lstm_out = config.lstm_hidden_size * (2 if config.lstm_bidirectional else 1)
        self.projection = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(lstm_out, config.text_embed_dim), nn.ReLU()
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids and mask -> (B, text_embed_dim); an empty caption gives a zero embedding."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(dim=1)  # (B,)
        words = self.embedding(input_ids)  # (B, T, E)
        # Packing skips the padding; a zero-length caption is packed as one pad token and zeroed below.
        packed = pack_padded_sequence(words, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=input_ids.shape[1])  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B, H)
        return self.projection(pooled) * (lengths > 0).unsqueeze(-1).to(states.dtype)


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
        self.text_encoder = TextEncoder(config) if config.uses_text else None
        # A fusion model combines the two embeddings (fusion.py); a single-modality model reads its one embedding.
        self.fusion = build_fusion(config) if config.modality == "fusion" else None
        if self.fusion is not None:
            in_features = self.fusion.output_dim
        else:
            in_features = config.image_embed_dim if config.uses_image else config.text_embed_dim
        layers: list[nn.Module] = []
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

    def encode_text(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(B, T) token ids -> (B, text_embed_dim)."""
        if self.text_encoder is None:
            raise MMClassifierError(f"This is a {self.config.modality}-only model: it has no text encoder.")
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
        size = self.config.image_embed_dim if modality == "image" else self.config.text_embed_dim
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
        **kwargs,
    ) -> MultiModalOutput:
        """Predict concept logits from a photo (``pixel_values`` or cached ``frozen_features``) and/or a caption.

        Args:
            pixel_values: (B, 3, H, W) normalised images.
            input_ids, attention_mask: (B, T) caption tokens.
            labels: (B, num_concepts) multi-hot targets; when given, ``loss`` is computed.
            frozen_features: cached output of the backbone's frozen part (:meth:`ImageEncoder.frozen_features`),
                instead of ``pixel_values``.
            mirrored_frozen_features: the same for the photos' mirror images (test-time mirror averaging).
            image_embeds: (B, image_embed_dim) from :meth:`encode_image`, instead of either (a frozen image
                encoder's embeddings can be computed once per photo).
            text_embeds: (B, text_embed_dim) from :meth:`encode_text`, instead of ``input_ids`` (likewise once
                per caption for a frozen text encoder).
        """
        has_image = pixel_values is not None or frozen_features is not None or image_embeds is not None
        has_text = input_ids is not None or text_embeds is not None
        if not has_image and not has_text:
            raise MMClassifierError("Give a photo, a caption, or both: the model got neither.")
        if not self.config.uses_image:
            image_embeds = None
        elif has_image and image_embeds is None:
            image_embeds = self.encode_image(pixel_values, frozen_features, mirrored_frozen_features)  # (B, Di)
        if not self.config.uses_text:
            text_embeds = None
        elif has_text and text_embeds is None:
            text_embeds = self.encode_text(input_ids, attention_mask)  # (B, Dt)
        if self.training:
            # A frozen encoder runs in inference mode; its embedding gets the dropout its own layers would apply.
            if image_embeds is not None and "image" in self.frozen_encoders:
                image_embeds = nn.functional.dropout(image_embeds, self.config.dropout, training=True)
            if text_embeds is not None and "text" in self.frozen_encoders:
                text_embeds = nn.functional.dropout(text_embeds, self.config.dropout, training=True)
            if self.config.modality == "fusion" and self.config.modality_dropout > 0:
                image_embeds, text_embeds = self._drop_modalities(image_embeds, text_embeds)
        logits = self.classify(image_embeds, text_embeds)  # (B, C)

        loss = None
        if labels is not None:
            pos_weight = None
            if self.config.pos_weight is not None:
                pos_weight = torch.tensor(self.config.pos_weight, device=logits.device, dtype=logits.dtype)
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype), pos_weight=pos_weight
            )
        return MultiModalOutput(loss=loss, logits=logits, image_embeds=image_embeds, text_embeds=text_embeds)

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
        """Freeze the image backbone except its last ``trainable_blocks`` blocks (0: frozen entirely)."""
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
