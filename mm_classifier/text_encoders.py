"""The caption encoders, chosen by ``config.text_encoder_type``: the lstm and the bag, learnt from scratch on a word
vocabulary, and a pretrained transformers encoder; each returns ``(B, config.text_output_dim)``: a projection to
``text_embed_dim``, or a ``"tfidf"`` bag's concept scores."""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoConfig, AutoModel

from .configuration import MultiModalConfig
from .errors import MMClassifierError


def _projection(width: int, config: MultiModalConfig) -> nn.Sequential:
    """A caption vector (B, width) -> the text embedding (B, text_embed_dim)."""
    return nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.text_embed_dim), nn.ReLU())


class TextEncoder(nn.Module):
    """``text_encoder_type="lstm"``: word embeddings -> (Bi)LSTM over packed sequences -> masked mean pool ->
    projection. The original notebooks' design; learnt from scratch."""

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
        self.projection = _projection(config.lstm_hidden_size * (2 if config.lstm_bidirectional else 1), config)

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


class BagTextEncoder(nn.Module):
    """``text_encoder_type="bag"``: a bag of a text's words and word bigrams (fastText-style), over the whole text.
    Learnt from scratch; word order beyond neighbours is ignored, which costs little on descriptions and makes a
    long text as cheap as a short one.

    A bigram is one of ``bag_buckets`` rows chosen by hashing the two word ids, so the table's size does not grow
    with the data. Each row has a weight, 1 until :meth:`fit_token_weights` sets the inverse document frequencies
    of the training texts (TF-IDF's weighting: a word that every text has says little).

    ``bag_pooling="tfidf"`` (the default): the text's TF-IDF vector (its tokens' weights, divided by their L2
    norm, in which each occurrence of a repeated word counts as a term of its own) times a table with one column
    per concept: a linear model of the text, trained under the L2 penalty ``bag_l2`` (:meth:`penalty`), as a
    TF-IDF logistic regression is. Its concept scores are the text embedding; a text-only model adds an intercept per
    concept. ``"mean"``: the first bag, the IDF-weighted mean of embeddings, then a projection (older folders).
    """

    HASH_MULTIPLIER = 1_000_003  # a prime: (first * p + second) spreads the id pairs over the buckets
    # The table learns at 100 times the model's rate (0.1 at the default 1e-3, under the run's cosine decay), as a
    # regression on TF-IDF features learns well with Adam (docs/experiments.md); so do the text-only model's
    # intercepts (modeling.ConceptBias). The first bag's projection learnt at 10 times.
    LEARNING_RATE_SCALES = {"embedding.": 100.0}
    MEAN_LEARNING_RATE_SCALES = {"embedding.": 100.0, "projection.": 10.0}

    def __init__(self, config: MultiModalConfig):
        super().__init__()
        self.vocab_size, self.buckets, self.pad_token_id = config.vocab_size, config.bag_buckets, config.pad_token_id
        self.pooling, self.l2 = config.bag_pooling, config.bag_l2
        rows = config.vocab_size + config.bag_buckets  # the words, then the bigram buckets
        self.register_buffer("token_weights", torch.ones(rows))
        if self.pooling == "mean":
            self.embedding = nn.EmbeddingBag(rows, config.word_embed_dim, mode="sum", padding_idx=config.pad_token_id)
            self.projection = _projection(config.word_embed_dim, config)
            self.LEARNING_RATE_SCALES = self.MEAN_LEARNING_RATE_SCALES
        else:
            self.embedding = nn.EmbeddingBag(rows, config.text_output_dim, mode="sum", padding_idx=config.pad_token_id)
            with torch.no_grad():  # a regression starts near zero (the padding row stays 0)
                self.embedding.weight.normal_(0, 0.01)[config.pad_token_id] = 0
            self.projection = nn.Identity()

    def bag(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) word ids -> (B, 2T - 1) rows of the embedding table: the words, then the bigrams (pad: none)."""
        words = input_ids.long()
        if attention_mask is not None:
            words = words.masked_fill(attention_mask == 0, self.pad_token_id)
        present = words != self.pad_token_id  # (B, T)
        first, second = words[:, :-1], words[:, 1:]
        bigrams = (first * self.HASH_MULTIPLIER + second) % self.buckets + self.vocab_size  # (B, T - 1)
        bigrams = bigrams.masked_fill(~(present[:, :-1] & present[:, 1:]), self.pad_token_id)
        return torch.cat([words, bigrams], dim=1)

    @torch.no_grad()
    def fit_token_weights(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Weight each row by its smoothed inverse document frequency in these (training) texts,
        ``log((1 + N) / (1 + df)) + 1`` as scikit-learn's TfidfVectorizer computes it."""
        size = len(self.token_weights)
        counts = torch.zeros(size, dtype=torch.long)
        for start in range(0, len(input_ids), 4096):
            rows = self.bag(input_ids[start : start + 4096], attention_mask[start : start + 4096]).cpu()  # (b, L)
            in_texts = torch.unique(torch.arange(len(rows))[:, None] * size + rows)  # each (text, row) once
            counts += torch.bincount(in_texts % size, minlength=size)
        idf = torch.log((1 + len(input_ids)) / (1 + counts.double())) + 1
        self.token_weights.copy_(idf.to(self.token_weights))

    def penalty(self) -> torch.Tensor | float:
        """``bag_l2`` times the sum of the table's squared weights, for the training loss (0 while frozen)."""
        if not self.l2 or not self.embedding.weight.requires_grad:
            return 0.0
        return self.l2 * self.embedding.weight.square().sum()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) word ids and mask -> (B, text_output_dim); an empty caption gives a zero embedding."""
        rows = self.bag(input_ids, attention_mask)  # (B, L)
        weights = self.token_weights[rows].masked_fill(rows == self.pad_token_id, 0)  # (B, L)
        if self.pooling == "mean":
            total = weights.sum(dim=1, keepdim=True)  # (B, 1): the weighted mean's denominator
        else:
            total = weights.square().sum(dim=1, keepdim=True).sqrt()  # (B, 1): the TF-IDF vector's L2 norm
        if torch.onnx.is_in_onnx_export():  # embedding_bag exports as a loop over the batch: a gather and a sum
            summed = (self.embedding.weight[rows] * weights.unsqueeze(-1)).sum(dim=1)  # padding rows weigh 0
        else:
            summed = self.embedding(rows, per_sample_weights=weights)  # (B, E)
        pooled = summed / total.clamp(min=1e-6)  # (B, E)
        return self.projection(pooled) * (total > 0).to(pooled.dtype)


class PretrainedTextEncoder(nn.Module):
    """``text_encoder_type="transformers"``: a transformers encoder (BERT, DistilBERT, RoBERTa, MiniLM, CLIP's text
    tower, ...) -> caption vector (``text_pooling``) -> projection.

    Built from ``config.text_model_config`` alone (no download); :meth:`load_pretrained` brings its weights once,
    for training, and a saved model keeps them in its own ``model.safetensors``. The encoder runs in two parts,
    as the photo's backbone does: :meth:`caption_features` (the encoder and pooling, frozen unless
    ``text_trainable_layers`` > 0, so training can compute them once per caption) and the projection.
    """

    # Fine-tuned pretrained layers learn at a thirtieth of the model's rate (3e-5 at the default 1e-3), as
    # transformers' fine-tuning recipes do; the projection learns at the model's.
    LEARNING_RATE_SCALES = {"model.": 0.03}

    def __init__(self, config: MultiModalConfig):
        super().__init__()
        model_config = AutoConfig.for_model(**config.text_model_config)
        self.model = AutoModel.from_config(model_config)
        self.pooling = config.text_pooling
        self.trainable_layers = 0
        self.freeze(config.text_trainable_layers)
        self.projection = _projection(model_config.hidden_size, config)

    def load_pretrained(self, name: str | os.PathLike) -> None:
        """The encoder's weights from a hub id or a local folder (transformers' ``from_pretrained``)."""
        pretrained = type(self.model).from_pretrained(os.path.expanduser(str(name)))
        missing, unexpected = self.model.load_state_dict(pretrained.state_dict(), strict=False)
        if missing:
            raise MMClassifierError(f"The weights of {name} do not fit its configuration: missing {missing[:3]}.")
        del unexpected  # e.g. position ids some checkpoints keep as weights

    def layers(self) -> nn.ModuleList:
        """The encoder's stack of layers: its longest ``nn.ModuleList`` (BERT's ``encoder.layer``, CLIP's
        ``encoder.layers``, DistilBERT's ``transformer.layer``, ...)."""
        stacks = [m for m in self.model.modules() if isinstance(m, nn.ModuleList)]
        if not stacks:
            raise MMClassifierError(f"{type(self.model).__name__} has no stack of layers to fine-tune in part.")
        return max(stacks, key=len)

    def freeze(self, trainable_layers: int) -> None:
        """Train only the last ``trainable_layers`` layers (0: none), and with ``"pooler"`` pooling also the
        modules registered after them (a final norm, the pooler), which mean pooling does not read. A frozen
        encoder runs in inference mode (no dropout)."""
        layers = self.layers()
        if trainable_layers > len(layers):
            raise MMClassifierError(
                f"text_trainable_layers={trainable_layers}, but {type(self.model).__name__} has {len(layers)} layers."
            )
        self.trainable_layers = trainable_layers
        self.model.requires_grad_(False)
        if trainable_layers and self.pooling == "pooler":
            # Parameters are registered in forward order: the first trainable layer's, and every one after it.
            first = next(layers[len(layers) - trainable_layers].parameters())
            trainable = False
            for parameter in self.model.parameters():
                trainable = trainable or parameter is first
                parameter.requires_grad_(trainable)
        elif trainable_layers:
            layers[len(layers) - trainable_layers :].requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.trainable_layers == 0:
            self.model.eval()
        return self

    def caption_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) tokens -> (B, hidden) caption vectors; zeros for a caption without tokens (mask all zero)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        present = attention_mask.sum(dim=1) > 0  # (B,)
        # A caption without tokens still gets its special tokens' positions, so no attention row is empty.
        visible = torch.where(present[:, None], attention_mask, torch.ones_like(attention_mask)).long()
        output = self.model(input_ids=input_ids.long(), attention_mask=visible)
        if self.pooling == "pooler":
            pooled = output.pooler_output  # (B, hidden)
        else:
            mask = visible.unsqueeze(-1).to(output.last_hidden_state.dtype)  # (B, T, 1)
            pooled = (output.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B, hidden)
        return pooled * present.unsqueeze(-1).to(pooled.dtype)

    def forward(self, input_ids=None, attention_mask=None, caption_features=None) -> torch.Tensor:
        """(B, T) tokens, or cached :meth:`caption_features` (B, hidden), -> (B, text_embed_dim)."""
        if caption_features is None:
            caption_features = self.caption_features(input_ids, attention_mask)
        present = caption_features.abs().sum(dim=1, keepdim=True) > 0
        return self.projection(caption_features) * present.to(caption_features.dtype)


TEXT_ENCODERS = {"lstm": TextEncoder, "bag": BagTextEncoder, "transformers": PretrainedTextEncoder}
