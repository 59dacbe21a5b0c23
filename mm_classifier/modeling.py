"""The fusion classifier: timm image encoder, Embedding + LSTM text encoder, concatenation + MLP head."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import timm
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import MultiModalConfig
from .errors import MMClassifierError

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
    """timm backbone (pooled features) + a small projection.

    The backbone is split into a frozen *stem* and a trainable *tail* (the last ``trainable_blocks`` stages of
    an EfficientNet-style timm model plus its head convolution), so the stem's output can be cached. With
    ``config.image_feature_blocks`` the features are the pooled outputs of those stages instead of the head's.
    """

    def __init__(self, config: MultiModalConfig):
        super().__init__()
        # pretrained=False: from_pretrained and tests must never download; weights come from the checkpoint
        # or from load_pretrained_backbone().
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_kwargs)
        self.feature_blocks: list[int] | None = None
        self.local_projection = config.image_local_projection
        self.mirror_average = config.image_mirror_average
        if config.image_feature_blocks is None and not self.local_projection:
            # Some timm heads (MobileNetV3) widen the pooled features beyond num_features.
            width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        else:
            if config.image_feature_blocks is not None:
                self.feature_blocks = self._resolve_blocks(config.image_feature_blocks)
            width = self._feature_width()
        self.projection = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(width, config.image_embed_dim), nn.ReLU()
        )
        self.trainable_blocks: int | None = None  # None: everything trains
        self._freeze_unused()

    @property
    def num_blocks(self) -> int:
        return len(self.backbone.blocks) if hasattr(self.backbone, "blocks") else 0

    def _freeze_unused(self) -> None:
        """With chosen feature stages, the later stages and the head never run: they must not ask for gradients
        (multi-process training would wait for theirs forever). Their weights stay, so checkpoints still load."""
        if self.feature_blocks is not None:
            b = self.backbone
            for module in (*b.blocks[self.feature_blocks[-1] + 1 :], b.conv_head, b.bn2):
                module.requires_grad_(False)

    def _has_stages(self) -> bool:
        return all(hasattr(self.backbone, a) for a in ("conv_stem", "bn1", "blocks", "conv_head"))

    def _resolve_blocks(self, blocks) -> list[int]:
        n = self.num_blocks
        if not self._has_stages():
            raise MMClassifierError(
                f"image_feature_blocks needs an EfficientNet/MobileNet-style timm backbone; "
                f"{type(self.backbone).__name__} has no 'blocks'."
            )
        if not all(-n <= b < n for b in blocks):
            raise MMClassifierError(f"image_feature_blocks {list(blocks)}: the backbone has stages 0 to {n - 1} (or -{n} to -1).")
        return sorted(b % n for b in blocks)

    @torch.no_grad()
    def _feature_width(self) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        width = self.pooled_features(torch.zeros(1, 3, 64, 64)).shape[1]
        self.backbone.train(was_training)
        return width

    def _pool_blocks(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """Run stages ``first`` onward on ``x`` (the output of stage ``first - 1``), pooling the chosen ones.

        With a local projection the chosen stages' maps are kept instead: average-pooled to the grid of the
        coarsest one and concatenated, (B, F, h, w).
        """
        maps = [x] if first - 1 in self.feature_blocks else []
        for index in range(first, self.feature_blocks[-1] + 1):
            x = self.backbone.blocks[index](x)
            if index in self.feature_blocks:
                maps.append(x)  # (B, C_index, h_index, w_index)
        if not self.local_projection:
            return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        grid = maps[-1].shape[-2:]
        return torch.cat([nn.functional.adaptive_avg_pool2d(m, grid) for m in maps], dim=1)

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, F): the backbone's pooled head output, or its chosen stages' pooled outputs.

        With ``image_local_projection`` the features are not pooled yet: (B, F, h, w).
        """
        if self.feature_blocks is None:
            return self.backbone.forward_features(pixel_values) if self.local_projection else self.backbone(pixel_values)
        b = self.backbone
        return self._pool_blocks(b.bn1(b.conv_stem(pixel_values)), 0)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled (B, F) features, or a (B, F, h, w) map projected at every position and then averaged."""
        if features.dim() == 2:
            return self.projection(features)
        return self.projection(features.permute(0, 2, 3, 1)).mean(dim=(1, 2))

    def _check_split(self, trainable_blocks: int) -> None:
        if trainable_blocks and not self._has_stages():
            raise MMClassifierError(
                f"trainable_blocks={trainable_blocks} needs an EfficientNet/MobileNet-style timm backbone; "
                f"{type(self.backbone).__name__} has no 'blocks'. Use 0 (frozen) or train it whole."
            )
        if not 0 <= trainable_blocks <= max(self.num_blocks, 0):
            raise MMClassifierError(f"trainable_blocks must be between 0 and {self.num_blocks}, got {trainable_blocks}.")
        first_trainable = self.num_blocks - trainable_blocks
        if trainable_blocks and self.feature_blocks and self.feature_blocks[0] < first_trainable - 1:
            raise MMClassifierError(
                f"image_feature_blocks {self.feature_blocks} reach into the frozen stages whose output is cached; "
                f"with trainable_blocks={trainable_blocks} they must be {first_trainable - 1} or later."
            )

    def stem(self, pixel_values: torch.Tensor, trainable_blocks: int = 0) -> torch.Tensor:
        """The frozen part: (B, 3, H, W) -> the features when nothing trains (pooled (B, F), or (B, F, h, w) with
        a local projection), else the map entering the tail."""
        self._check_split(trainable_blocks)
        if trainable_blocks == 0:
            return self.pooled_features(pixel_values)
        b = self.backbone
        x = b.bn1(b.conv_stem(pixel_values))
        return b.blocks[: self.num_blocks - trainable_blocks](x)

    def tail(self, stem_output: torch.Tensor, trainable_blocks: int = 0) -> torch.Tensor:
        """The trainable part: stem output -> features (pooled (B, F), or (B, F, h, w) with a local projection)."""
        if trainable_blocks == 0:
            return stem_output
        if self.feature_blocks is not None:
            return self._pool_blocks(stem_output, self.num_blocks - trainable_blocks)
        b = self.backbone
        x = b.bn2(b.conv_head(b.blocks[self.num_blocks - trainable_blocks :](stem_output)))
        return x if self.local_projection else b.forward_head(x)

    def freeze(self, trainable_blocks: int) -> None:
        """Freeze the backbone except its last ``trainable_blocks`` stages (and head conv); 0 freezes it all."""
        self._check_split(trainable_blocks)
        self.trainable_blocks = trainable_blocks
        self.backbone.requires_grad_(False)
        if trainable_blocks:
            b = self.backbone
            for module in (*b.blocks[self.num_blocks - trainable_blocks :], b.conv_head, b.bn2):
                module.requires_grad_(True)
            self._freeze_unused()
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        # Fine-tuning a (partly) frozen pretrained backbone: every batch norm keeps its statistics, trainable
        # stages too. Small CPU batches would corrupt them, and weights with batch norm folded into the
        # convolutions (TFLite conversions) have identity statistics that batch statistics would destroy.
        # Their scale and shift still train. A backbone trained from scratch (never frozen) uses batch statistics.
        if mode and self.trainable_blocks is not None:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, pixel_values=None, stem_output=None, trainable_blocks: int = 0) -> torch.Tensor:
        """(B, 3, H, W) pixels, or a cached stem output, -> (B, image_embed_dim).

        With ``config.image_mirror_average``, in inference mode the embedding of pixels is the mean of the photo's
        and its mirror image's; a cached stem output is one view (the caller averages two, see train.py).
        """
        if stem_output is None and self.mirror_average and not self.training:
            # Test-time augmentation: the photo and its mirror image in one batch, their embeddings averaged.
            both = torch.cat([pixel_values, pixel_values.flip(-1)])
            if pixel_values.is_contiguous(memory_format=torch.channels_last):
                both = both.contiguous(memory_format=torch.channels_last)
            return self.project(self.pooled_features(both)).view(2, len(pixel_values), -1).mean(0)
        if stem_output is None:
            features = self.pooled_features(pixel_values)
        else:
            features = self.tail(stem_output, trainable_blocks)
        return self.project(features)


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
        in_features = (config.image_embed_dim if config.uses_image else 0) + (
            config.text_embed_dim if config.uses_text else 0
        )
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

    def encode_image(self, pixel_values=None, stem_output=None) -> torch.Tensor:
        """(B, 3, H, W) pixels or a cached backbone stem output -> (B, image_embed_dim)."""
        if self.image_encoder is None:
            raise MMClassifierError(f"This is a {self.config.modality}-only model: it has no image encoder.")
        blocks = self.image_encoder.trainable_blocks or 0
        return self.image_encoder(pixel_values, stem_output=stem_output, trainable_blocks=blocks)

    def encode_text(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(B, T) token ids -> (B, text_embed_dim)."""
        if self.text_encoder is None:
            raise MMClassifierError(f"This is a {self.config.modality}-only model: it has no text encoder.")
        return self.text_encoder(input_ids, attention_mask)

    def classify(self, image_embeds=None, text_embeds=None) -> torch.Tensor:
        """Embeddings -> (B, num_concepts) logits. A fusion model treats a missing modality as zeros."""
        parts = []
        if self.config.uses_image:
            parts.append(image_embeds if image_embeds is not None else self._zeros(text_embeds, "image"))
        if self.config.uses_text:
            parts.append(text_embeds if text_embeds is not None else self._zeros(image_embeds, "text"))
        return self.classifier(torch.cat(parts, dim=-1))

    def _zeros(self, other: torch.Tensor | None, modality: str) -> torch.Tensor:
        if other is None or self.config.modality != "fusion":
            raise MMClassifierError(f"The {self.config.modality} model needs a {modality} input.")
        size = self.config.image_embed_dim if modality == "image" else self.config.text_embed_dim
        return other.new_zeros(other.shape[0], size)

    # -------------------------------------------------------------------------------- forward

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        stem_output: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> MultiModalOutput:
        """Predict concept logits from a photo (``pixel_values`` or a cached ``stem_output``) and/or a caption.

        Args:
            pixel_values: (B, 3, H, W) normalised images.
            input_ids, attention_mask: (B, T) caption tokens.
            labels: (B, num_concepts) multi-hot targets; when given, ``loss`` is computed.
            stem_output: cached output of the frozen backbone part, instead of ``pixel_values``.
            image_embeds: (B, image_embed_dim) from :meth:`encode_image`, instead of either (a frozen image
                encoder's embeddings can be computed once per photo).
            text_embeds: (B, text_embed_dim) from :meth:`encode_text`, instead of ``input_ids`` (likewise once
                per caption for a frozen text encoder).
        """
        has_image = pixel_values is not None or stem_output is not None or image_embeds is not None
        has_text = input_ids is not None or text_embeds is not None
        if not has_image and not has_text:
            raise MMClassifierError("Give a photo, a caption, or both: the model got neither.")
        if not self.config.uses_image:
            image_embeds = None
        elif has_image and image_embeds is None:
            image_embeds = self.encode_image(pixel_values, stem_output)  # (B, Di)
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
        encoders (README, "Training").
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
        """Freeze the image backbone except its last ``trainable_blocks`` stages (0: frozen entirely)."""
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
