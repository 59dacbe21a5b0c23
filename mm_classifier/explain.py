"""Why a prediction: each concept's probability from photo + caption and from either alone, where in the photo
the model sees it (a Grad-CAM heat map) and how much each caption word adds to it (the word hidden)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .errors import MMClassifierError
from .images import load_image

if TYPE_CHECKING:
    from .predict import Predictor

DEFAULT_TOP_K = 3  # concepts explained when none reaches its threshold (multi-label)
MIN_HEATMAP_SIDE = 7  # cells a side of the map a heat map is read from (a 224-pixel photo's last map has 7)


@dataclass
class ConceptExplanation:
    """One concept's explanation.

    Attributes:
        concept: the concept's name.
        both: probability from the photo and the caption together, as ``Predictor.predict`` gives it (calibrated;
            a single-label model's softmax over its classes); None unless both were given and the model reads both.
        photo_only: probability from the photo alone (a fusion model's missing caption is a zero embedding, as in
            ``Predictor.predict(photo, None)``); None without a photo or for a text-only model.
        caption_only: probability from the caption alone; None without a caption or for an image-only model.
        heatmap: (H, W) float32 in [0, 1] at the photo's own resolution, 1 where the photo most supports the
            concept; None without a photo or for a text-only model. All zeros when nothing in the photo does.
        words: (word, contribution) for each caption token in order, the contribution being the probability
            minus the probability with that word hidden behind ``[UNK]``: positive where the word speaks for
            the concept. Empty without a caption or for an image-only model.
    """

    concept: str
    both: float | None
    photo_only: float | None
    caption_only: float | None
    heatmap: np.ndarray | None = None
    words: list[tuple[str, float]] = field(default_factory=list)

    @property
    def probability(self) -> float:
        """The probability explained: from everything the model read."""
        return next(p for p in (self.both, self.photo_only, self.caption_only) if p is not None)


@dataclass
class Explanation:
    """The explained concepts of one photo and/or caption, most probable first (``explanation["dog"]`` looks one up).

    Attributes:
        concepts: one :class:`ConceptExplanation` per explained concept.
        predicted: the concepts at or above their thresholds, most probable first (all concepts considered,
            not only the explained ones); for a single-label model its most probable class alone.
        caption: the caption that was read, or None.
        both, photo_only, caption_only: every concept's probability from the photo and the caption, the photo
            alone and the caption alone (None where that input was not given or is not read).
    """

    concepts: list[ConceptExplanation]
    predicted: list[str]
    caption: str | None = None
    both: dict[str, float] | None = None
    photo_only: dict[str, float] | None = None
    caption_only: dict[str, float] | None = None

    @property
    def probabilities(self) -> dict[str, float]:
        """Every concept's probability from everything the model read, as ``Predictor.predict`` gives them."""
        return next(p for p in (self.both, self.photo_only, self.caption_only) if p is not None)

    def __getitem__(self, concept: str) -> ConceptExplanation:
        for entry in self.concepts:
            if entry.concept == concept:
                return entry
        raise KeyError(f"{concept!r} was not explained; explained: {[e.concept for e in self.concepts]}")

    def to_dict(self) -> dict:
        """JSON-ready: probabilities and word contributions (heat maps left out: they are photo-sized arrays)."""
        return {
            "caption": self.caption,
            "predicted": list(self.predicted),
            "concepts": [
                {"concept": e.concept, "both": e.both, "photo_only": e.photo_only, "caption_only": e.caption_only,
                 "words": [[word, value] for word, value in e.words]}
                for e in self.concepts
            ],
        }


def explain(
    predictor: Predictor,
    photo=None,
    caption: str | None = None,
    concepts: Sequence[str] | str | None = None,
    max_heatmap_side: int | None = None,
) -> Explanation:
    """Explain a prediction concept by concept.

    The photo heat map is Grad-CAM (:func:`_grad_cam`) of the explained probability (photo + caption when both
    are read) on a backbone feature map (:func:`_heatmap_stages` says which), for every explained concept from
    one forward and one batched backward pass. Gradients reach every map at prediction time (the map itself
    asks for them, so frozen weights do not stop them), so occlusion, a forward pass per occluded patch, is not
    needed. Each caption word's contribution comes from one batched forward pass over the caption with
    each word hidden in turn. The probabilities come from the same embeddings through ``model.classify``, as
    ``Predictor.predict`` gets them, a missing input being the model's own missing-modality path.

    Args:
        predictor: a loaded :class:`~mm_classifier.Predictor`.
        photo: a photo (path, PIL image, numpy array, bytes), or None.
        caption: a caption, or None.
        concepts: concept names to explain; default: the predicted ones (a single-label model's most probable
            class), or the ``DEFAULT_TOP_K`` most probable when none is predicted.
        max_heatmap_side: heat maps at most this many pixels on their longer side (the photo's proportions
            kept); default: the photo's own size.

    Raises:
        MMClassifierError: nothing the model can read was given, an unknown concept, or an unreadable photo.
    """
    model, processor = predictor.model, predictor.processor
    config = model.config
    known = config.concepts  # a computed property: read once
    reads_photo, reads_caption = _inputs_read(config, photo, caption)
    chosen = _concept_indices(known, concepts)
    device = next(model.parameters()).device
    image = load_image(photo) if reads_photo else None

    text_embeds, words = _caption_embeddings(model, processor, caption, device) if reads_caption else (None, [])
    image_embeds, maps = _photo_embeddings(model, processor, image, device) if reads_photo else (None, [])
    with torch.enable_grad() if maps else torch.no_grad():
        photo_logits = model.classify(image_embeds, None) if reads_photo else None  # (1, C)
        caption_logits = model.classify(None, text_embeds) if reads_caption else None  # (1 + n, C)
        both_logits = None
        if reads_photo and reads_caption:
            both_logits = model.classify(image_embeds.expand(len(text_embeds), -1), text_embeds)  # (1 + n, C)
    explained_logits = next(x for x in (both_logits, photo_logits, caption_logits) if x is not None)

    # As Predictor.predict: calibrated, then a sigmoid per concept or a softmax over a single-label model's classes.
    probabilities = model.probabilities(explained_logits.detach()).cpu()  # (1 + n or 1, C)
    ranked = torch.argsort(probabilities[0], descending=True).tolist()
    predicted = ranked[:1] if config.single_label else [
        i for i in ranked if probabilities[0, i].item() >= config.thresholds[i]]
    if chosen is None:
        chosen = predicted or ranked[:DEFAULT_TOP_K]

    heatmaps = _grad_cam(explained_logits[0, chosen], maps, _heatmap_size(image, max_heatmap_side)) if maps else None
    # Row 0 holds the whole caption, row 1 + i the caption with word i hidden.
    word_values = (probabilities[:1, chosen] - probabilities[1:, chosen]).T.tolist() if words else None  # (K, n)

    # Row 0 of each: the input as given (a softmax needs every class's logit, not the explained one's alone).
    both, photo_only, caption_only = (None if logits is None else model.probabilities(logits[:1].detach())[0].tolist()
                                      for logits in (both_logits, photo_logits, caption_logits))

    def probability(row, index):
        return None if row is None else row[index]

    entries = [
        ConceptExplanation(
            concept=known[index],
            both=probability(both, index),
            photo_only=probability(photo_only, index),
            caption_only=probability(caption_only, index),
            heatmap=None if heatmaps is None else heatmaps[k],
            words=[] if word_values is None else list(zip(words, word_values[k], strict=True)),
        )
        for k, index in enumerate(chosen)
    ]
    every = [None if row is None else dict(zip(known, row, strict=True)) for row in (both, photo_only, caption_only)]
    return Explanation(entries, [known[i] for i in predicted], caption if reads_caption else None, *every)


def _heatmap_size(image, max_side: int | None) -> tuple[int, int]:
    """(height, width) of the photo, scaled down to at most ``max_side`` on its longer side."""
    scale = min(1.0, max_side / max(image.size)) if max_side else 1.0
    return max(1, round(image.height * scale)), max(1, round(image.width * scale))


def _inputs_read(config, photo, caption) -> tuple[bool, bool]:
    """Whether the model reads the photo and the caption it was given; a clear error when it reads neither."""
    if photo is None and caption is None:
        raise MMClassifierError("Give a photo, a caption, or both to explain: none was given.")
    reads_photo = photo is not None and config.uses_image
    reads_caption = caption is not None and config.uses_text
    if not reads_photo and not reads_caption:
        needed = {"image": "photo", "text": "caption"}[config.modality]
        raise MMClassifierError(f"This {config.modality}-only model explains a {needed}; none was given.")
    if caption is not None and not isinstance(caption, str):
        raise MMClassifierError(f"The caption must be a string; got {type(caption).__name__}.")
    return reads_photo, reads_caption


def _caption_embeddings(model, processor, caption: str, device) -> tuple[torch.Tensor, list[str]]:
    """The caption's embedding (row 0) and, in the same batch, one per word with that word hidden
    (row 1 + i): (1 + n, Dt); and the n words as written."""
    input_ids, attention_mask, words = _masked_captions(processor, caption)
    with torch.no_grad():
        return model.encode_text(input_ids.to(device), attention_mask.to(device)), words


def _photo_embeddings(model, processor, image, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The photo's embedding (1, Di) and the feature maps its heat maps are read from, in one forward: the
    backbone runs without recording anything for gradients up to those maps, which become leaves that ask for
    gradients, so that one backward from the logits reaches them (frozen weights do not stop it) and goes no
    further. The maps are those the features are pooled from (made leaves after the backbone), or a finer
    stage's (made leaves inside it, see :func:`_heatmap_stages`)."""
    encoder = model.image_encoder
    # channels_last, as Predictor feeds the model, so that the arithmetic matches predict()'s.
    pixel_values = processor(images=image)["pixel_values"].to(device).contiguous(memory_format=torch.channels_last)
    backbone = encoder.backbone
    inner = [(backbone.get_submodule(name), grid)
             for name, grid in _heatmap_stages(encoder, tuple(pixel_values.shape[-2:]))]
    with torch.no_grad(), _maps_as_leaves(inner) as maps:
        pooled = encoder.feature_maps(encoder.views(pixel_values))
    if not inner:
        pooled = [feature_map.detach().requires_grad_(True) for feature_map in pooled]
        maps.extend(pooled)
    with torch.enable_grad():
        return encoder.embed(pooled), maps  # (1, Di)


def _concept_indices(known: list[str], concepts) -> list[int] | None:
    if concepts is None:
        return None
    if isinstance(concepts, str):
        concepts = [concepts]
    concepts = list(concepts)
    if not concepts:
        raise MMClassifierError(f"The list of concepts to explain is empty; the model knows {', '.join(known)}.")
    unknown = [c for c in concepts if c not in known]
    if unknown:
        raise MMClassifierError(
            f"Unknown concept(s) {', '.join(map(repr, unknown))}: the model knows {', '.join(known)}."
        )
    return [known.index(c) for c in dict.fromkeys(concepts)]


# ------------------------------------------------------------------------------------------------ caption words


def _masked_captions(processor, caption: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The caption's tokens as the model reads them (row 0) and n copies, copy i with word i hidden: each of its
    tokens (a transformers tokenizer's subwords) replaced by the unknown-word token, or, where that token is the
    end-of-text or padding one (CLIP's, whose model reads its first end-of-text token), left out of the attention
    mask. ``input_ids`` and ``attention_mask`` (1 + n, T), and the n words as written (special tokens such as
    [CLS] are no words)."""
    tokenizer = processor.tokenizer
    encoded = processor.tokenize([caption])
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]  # (1, T)
    if tokenizer.unk_token_id is None:
        raise MMClassifierError("The model's tokenizer has no unknown-word token, so words cannot be hidden.")
    length = int(attention_mask.sum())
    # The tokenizer's own word of each token, and its character offsets: the words as written (it lower-cases).
    spans = tokenizer(caption, return_offsets_mapping=True, truncation=True, max_length=processor.max_length)
    positions: dict[int, list[int]] = {}
    for position, word in enumerate(spans.word_ids()[:length]):
        if word is not None:
            positions.setdefault(word, []).append(position)
    offsets = spans["offset_mapping"]
    words = [caption[offsets[p[0]][0] : offsets[p[-1]][1]] for p in positions.values()]
    masked, masks = input_ids.repeat(1 + len(words), 1), attention_mask.repeat(1 + len(words), 1)  # (1 + n, T)
    unk_ends_text = tokenizer.unk_token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id)
    for row, word_positions in enumerate(positions.values(), start=1):
        if unk_ends_text:
            masks[row, word_positions] = 0
        else:
            masked[row, word_positions] = tokenizer.unk_token_id
    return masked, masks, words


# ------------------------------------------------------------------------------------------------ photo heat map


# Per image encoder and input size: the feature stages the heat map reads (see _heatmap_stages).
_HEATMAP_STAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _heatmap_stages(image_encoder, pixel_size: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
    """Where the heat map of a photo of ``pixel_size`` is read: an empty list for the maps the photo's features
    are pooled from (``forward_features``' output, or with ``image_feature_blocks`` the chosen stages'), else
    one stage that timm's ``feature_info`` names, with its map's grid (h, w).

    The pooled maps serve when each has at least ``MIN_HEATMAP_SIDE`` cells a side, as Grad-CAM's last
    convolutional map has on a 224-pixel photo. A smaller input leaves them too coarse to point at anything (a
    64-pixel photo gives an EfficientNet's head 2 x 2 cells), so then the deepest stage that runs whose map is
    fine enough, or else the finest one if it is finer than the pooled maps: the gradient reaches it through
    the later stages, and it still sees whole objects. A ViT's final tokens are no map, and the patch tokens
    of its last block reach the class token that its head reads through no later attention, so its heat map
    comes from a block before the last.

    Found once per model and size, by a forward pass on a blank photo: the choice depends only on the maps' sizes.
    """
    chosen = _HEATMAP_STAGES.setdefault(image_encoder, {})
    if pixel_size in chosen:
        return chosen[pixel_size]
    backbone = image_encoder.backbone
    names = [info["module"] for info in backbone.feature_info]
    ran: set[str] = set()
    handles = [backbone.get_submodule(name).register_forward_hook(lambda *_, name=name: ran.add(name))
               for name in names]
    blank = next(image_encoder.parameters()).new_zeros(1, 3, *pixel_size)
    try:
        with torch.inference_mode():
            pooled = image_encoder.feature_maps(blank)
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():  # one map per feature_info stage, a ViT's tokens as a grid
        grids = [tuple(m.shape[-2:]) for m in backbone.forward_intermediates(blank, intermediates_only=True)]
    stages = [(name, grid) for name, grid in zip(names, grids, strict=True) if name in ran]

    def side(stage):
        return min(stage[1])

    tokens = pooled[0].dim() == 3
    coarsest = 0 if tokens else min(min(m.shape[-2:]) for m in pooled)
    if tokens:
        stages = stages[:-1] or stages
    fine = [stage for stage in stages if side(stage) >= MIN_HEATMAP_SIDE]
    finest = max(reversed(stages), key=side)  # the deepest of them
    if coarsest >= MIN_HEATMAP_SIDE:
        chosen[pixel_size] = []
    elif fine:
        chosen[pixel_size] = [fine[-1]]
    else:
        chosen[pixel_size] = [finest] if side(finest) > coarsest else []
    return chosen[pixel_size]


@contextlib.contextmanager
def _maps_as_leaves(modules: list[tuple[nn.Module, tuple[int, int]]]):
    """While the ``with`` block runs (under ``torch.no_grad()``), each module's output is replaced by a copy
    that asks for gradients, from where on the forward records what gradients need; yields those maps, (B, C,
    h, w) each. Of a module that outputs tokens (B, T, D) (a ViT's block), the patch tokens after the prefix
    (class) tokens, as the (h, w) grid given with it."""
    maps: list[torch.Tensor] = []

    def keep(output, grid):
        torch.set_grad_enabled(True)  # until the enclosing no_grad block ends and restores the mode
        output = output.detach()
        if output.dim() == 4:
            maps.append(output.requires_grad_(True))
            return output
        prefix = output.shape[1] - grid[0] * grid[1]
        patches = output[:, prefix:].unflatten(1, grid).permute(0, 3, 1, 2).requires_grad_(True)  # (B, D, h, w)
        maps.append(patches)
        return torch.cat([output[:, :prefix], patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)

    handles = [module.register_forward_hook(lambda module, args, output, grid=grid: keep(output, grid))
               for module, grid in modules]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def _grad_cam(logits: torch.Tensor, maps: list[torch.Tensor], size: tuple[int, int]) -> list[np.ndarray]:
    """Grad-CAM of K logits on the feature maps -> K heat maps (H, W) float32 in [0, 1].

    A cell's value is the sum over channels of activation x gradient, the gradient averaged over the cell and
    its 8 neighbours. Where the map is average-pooled into the features (the head map) the gradient is the same
    in every cell, so this is Grad-CAM exactly; on an inner block's map the gradient varies from cell to cell,
    and the neighbourhood is the compromise measured best: Grad-CAM's weights averaged over the whole map light
    up everything a weighted channel fires on (the sky, for a red ball), single cells' gradients pick out the
    edges of the stride pattern. A mirror-averaged model runs the photo and its mirror image in one batch: the
    mirror's map is flipped back and added, since both halves of the average carry the concept. Maps of several
    blocks are scaled by their number of cells, so that a block weighs per pixel what its pooled features weigh
    in the embedding, and added. The map minus its mean over the photo is kept where positive (where the
    evidence is above the photo's average: a uniform floor would hide the object) and divided by its maximum.
    """
    count = len(logits)
    grads = torch.autograd.grad(
        logits, maps, grad_outputs=torch.eye(count, device=logits.device, dtype=logits.dtype),
        is_grads_batched=True,
    )  # each (K, V, C, h, w), V = 1 view or 2 (photo, mirror)
    total = None
    for grad, feature_map in zip(grads, maps, strict=True):
        k, views, channels, h, w = grad.shape
        grad = nn.functional.avg_pool2d(grad.reshape(k * views, channels, h, w).float(), 3, stride=1, padding=1,
                                        count_include_pad=False).view(k, views, channels, h, w)
        cam = (grad * feature_map.detach().float().unsqueeze(0)).sum(dim=2)  # (K, V, h, w)
        if views == 2:
            cam = cam[:, :1] + cam[:, 1:].flip(-1)  # the mirror image's map, flipped back onto the photo
        cam = nn.functional.interpolate(cam * (h * w), size=size, mode="bilinear", align_corners=False)
        total = cam if total is None else total + cam  # (K, 1, H, W)
    total = total[:, 0]
    total = (total - total.mean(dim=(1, 2), keepdim=True)).clamp(min=0)
    peak = total.amax(dim=(1, 2), keepdim=True)
    total = torch.where(peak > 0, total / peak.clamp(min=torch.finfo(total.dtype).tiny), total)
    return [heatmap.cpu().numpy().astype(np.float32) for heatmap in total]

