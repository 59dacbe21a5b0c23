"""Fusion modules: how a photo's and a caption's embeddings become one vector for the classifier head.

Each module takes ``(B, image_embed_dim)`` and ``(B, text_output_dim)`` embeddings (zeros for a missing
modality) and returns ``(B, output_dim)``. ``config.fusion_type`` picks one from :data:`FUSION_TYPES`; adding a
method is one class here and one entry in that table.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration import MultiModalConfig


class ConcatFusion(nn.Module):
    """Concatenation (the original notebooks' design): the classifier's MLP does all the mixing."""

    description = "concatenation of the two embeddings, then fully connected layers"

    def __init__(self, image_dim: int, text_dim: int):
        super().__init__()
        self.output_dim = image_dim + text_dim

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return torch.cat([image_embeds, text_embeds], dim=-1)  # (B, Di + Dt)


class GatedFusion(nn.Module):
    """Gated multimodal unit (Arevalo et al., 2017): a learned per-dimension gate between the two embeddings.

    ``h = z * tanh(W_i x_i) + (1 - z) * tanh(W_t x_t)`` with ``z = sigmoid(W_z [x_i; x_t])``; the gate says,
    per example and dimension, how much the photo rather than the caption decides.
    """

    description = (
        "a gated multimodal unit (a learned per-dimension gate between the two embeddings), then fully connected layers"
    )

    def __init__(self, image_dim: int, text_dim: int):
        super().__init__()
        self.output_dim = max(image_dim, text_dim)
        self.image_projection = nn.Linear(image_dim, self.output_dim)
        self.text_projection = nn.Linear(text_dim, self.output_dim)
        self.gate = nn.Linear(image_dim + text_dim, self.output_dim)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(torch.cat([image_embeds, text_embeds], dim=-1)))  # (B, D)
        image = torch.tanh(self.image_projection(image_embeds))  # (B, D)
        text = torch.tanh(self.text_projection(text_embeds))  # (B, D)
        return gate * image + (1 - gate) * text


FUSION_TYPES: dict[str, type[nn.Module]] = {"concat": ConcatFusion, "gated": GatedFusion}


def build_fusion(config: MultiModalConfig) -> nn.Module:
    """The fusion module of a fusion model, sized from its config."""
    if config.fusion_type not in FUSION_TYPES:
        raise ValueError(
            f"MultiModalConfig.fusion_type = {config.fusion_type!r} is invalid: expected one of {sorted(FUSION_TYPES)}."
        )
    return FUSION_TYPES[config.fusion_type](config.image_embed_dim, config.text_output_dim)


def describe(config: MultiModalConfig) -> str:
    """How a model of this config combines photo and caption, in words (for model cards and the app)."""
    if config.modality == "text" and config.linear_bag:
        return "text only: a linear model of the text's TF-IDF vector (the bag's concept scores plus intercepts)"
    if config.modality != "fusion":
        return f"{config.modality} only: fully connected layers on the {config.modality} embedding"
    return FUSION_TYPES[config.fusion_type].description
