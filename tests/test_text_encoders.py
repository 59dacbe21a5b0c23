"""The caption encoders: lstm, bag and a transformers encoder (a tiny random BERT), their training paths, the
caption-vector cache and how many tokens a caption keeps."""

import json

import pytest
import torch

import train
from conftest import TINY_TRAIN_ARGS
from mm_classifier import MMClassifierError, MultiModalClassifier, MultiModalConfig, MultiModalProcessor, Predictor
from mm_classifier.features import cached_caption_features
from mm_classifier.text_models import caption_tokenizer, check_text_encoder, fit_max_length, pretrained_text_config
from mm_classifier.tokenization import DEFAULT_MAX_LENGTH

CONCEPTS = {0: "dog", 1: "beach", 2: "man"}
CAPTIONS = ["a dog runs on the beach", "a man walks his dog", "", "the beach at dusk, a man and a dog"]


def text_model(encoder: str, tiny_bert=None, **overrides):
    """A tiny text-only model and its processor."""
    if encoder == "transformers":
        tokenizer = caption_tokenizer(str(tiny_bert), CAPTIONS)
        overrides.setdefault("text_model_config", pretrained_text_config(str(tiny_bert))[0])
    else:
        tokenizer = caption_tokenizer(encoder, CAPTIONS, min_frequency=1)
    config = MultiModalConfig(
        modality="text", text_encoder_type=encoder, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        id2label=CONCEPTS, text_embed_dim=16, word_embed_dim=8, lstm_hidden_size=8, fusion_hidden_sizes=[16],
        bag_buckets=97, max_length=64, **overrides,
    )
    torch.manual_seed(0)
    model = MultiModalClassifier(config)
    if encoder == "transformers":
        model.text_encoder.load_pretrained(tiny_bert)
    return model, MultiModalProcessor.from_config(config, tokenizer)


@pytest.mark.parametrize("encoder", ["lstm", "bag", "transformers"])
def test_each_encoder_embeds_a_blank_caption_as_zeros_and_trains(encoder, tiny_bert):
    model, processor = text_model(encoder, tiny_bert, text_trainable_layers=1 if encoder == "transformers" else 0)
    batch = processor(text=CAPTIONS)
    out = model(**batch, labels=torch.ones(len(CAPTIONS), 3))
    assert torch.all(out.text_embeds[2] == 0) and torch.all(out.text_embeds[[0, 1, 3]].abs().sum(1) > 0)
    out.loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(model.get_parameter(name).grad is not None for name in trainable)


def test_bag_reads_neighbouring_word_order_and_the_whole_text(tiny_bert):
    model, processor = text_model("bag")
    model.eval()

    def embed(text):
        return model.encode_text(**processor.tokenize([text]))

    assert not torch.allclose(embed("a dog bites a man"), embed("a man bites a dog"))  # same words, other bigrams
    long = " ".join(["dog"] * 50)
    assert processor.tokenize([long + " beach"])["input_ids"].shape[1] == 51  # not cut at 32 tokens
    assert not torch.allclose(embed(long), embed(long + " beach"))


def test_transformers_encoder_trains_only_its_last_layers(tiny_bert):
    model, _ = text_model("transformers", tiny_bert, text_trainable_layers=1)
    encoder = model.text_encoder
    trainable = {name for name, p in encoder.model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("encoder.layer.1.") for name in trainable)
    frozen, _ = text_model("transformers", tiny_bert)
    assert not any(p.requires_grad for p in frozen.text_encoder.model.parameters())
    frozen.train()
    assert not frozen.text_encoder.model.training  # a frozen encoder runs without dropout
    with pytest.raises(MMClassifierError, match="has 2 layers"):
        text_model("transformers", tiny_bert, text_trainable_layers=3)


def test_cached_caption_features_give_the_token_path_s_embeddings(tiny_bert):
    model, processor = text_model("transformers", tiny_bert)
    model.eval()
    tokens = processor.tokenize(CAPTIONS)
    features = cached_caption_features(model, tokens["input_ids"], tokens["attention_mask"], batch_size=2)
    again = cached_caption_features(model, tokens["input_ids"], tokens["attention_mask"])  # read from the cache
    assert torch.equal(features, again)
    with torch.no_grad():
        direct = model(**tokens).logits
        cached = model(caption_features=features).logits
    torch.testing.assert_close(cached, direct, atol=2e-3, rtol=0)  # the cache stores float16


def test_max_length_fits_the_training_texts_within_the_encoder_s_limit(tiny_bert):
    tokenizer = caption_tokenizer("bag", ["word " * n for n in range(1, 200)])
    assert fit_max_length(tokenizer, ["a short caption"] * 10) == DEFAULT_MAX_LENGTH  # short texts: as before
    long_texts = ["word " * n for n in range(1, 201)]
    assert fit_max_length(tokenizer, long_texts) == 191  # the 95th percentile of 1..200 words, 190.05, rounded up
    assert fit_max_length(tokenizer, long_texts, limit=64) == 64
    bert = caption_tokenizer(str(tiny_bert), [])
    assert fit_max_length(bert, ["word " * 600]) == 128  # the tiny BERT's position limit


def test_a_text_encoder_that_cannot_be_had_fails_fast(tmp_path):
    with pytest.raises(MMClassifierError, match="HF_HUB_OFFLINE"):
        check_text_encoder("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(MMClassifierError, match="no such folder"):
        check_text_encoder(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MMClassifierError, match="without config.json"):
        check_text_encoder(str(tmp_path / "empty"))
    assert train.main(["--dataset", "sample", "--text-encoder", "bag", "--text-trainable-layers", "1"]) == 2


def test_a_text_model_needs_no_backbone_weights_offline(tiny_folder, tmp_path, capsys):
    # A pretrained backbone is the default for one's own data, and it cannot be downloaded offline; a text model
    # has no backbone, so nothing stops it.
    assert train.main(["--dataset", str(tiny_folder), "--output-dir", str(tmp_path), "--modality", "text",
                       "--epochs", "1", "--preprocessing-num-proc", "1"]) == 0
    assert "HF_HUB_OFFLINE" not in capsys.readouterr().err


@pytest.mark.parametrize("encoder", ["bag", "bert"])
def test_three_stages_train_save_and_reload_with_each_encoder(encoder, tiny_folder, tiny_bert, tmp_path):
    text_encoder = str(tiny_bert) if encoder == "bert" else encoder
    assert train.main(["--dataset", str(tiny_folder), "--output-dir", str(tmp_path), *TINY_TRAIN_ARGS,
                       "--epochs", "1", "--text-encoder", text_encoder, "--skip-report"]) == 0
    for stage in ("text", "fusion"):
        config = json.loads((tmp_path / stage / "config.json").read_text())
        assert config["text_encoder_type"] == ("transformers" if encoder == "bert" else "bag")
        assert config["max_length"] >= DEFAULT_MAX_LENGTH
        if encoder == "bag":  # the TF-IDF baseline's regularisation, 1 / (2 C) against the pairs' summed BCE
            pairs = json.loads((tmp_path / "text" / "all_results.json").read_text())["train_rows"]
            assert config["bag_l2"] == pytest.approx(1 / (2 * 4.0 * pairs * len(config["id2label"])))
        predictor = Predictor.from_pretrained(tmp_path / stage)
        model = MultiModalClassifier.from_pretrained(tmp_path / stage).eval()
        batch = predictor.processor(text=CAPTIONS)
        with torch.no_grad():
            torch.testing.assert_close(predictor.model(**batch).logits, model(**batch).logits)
    if encoder == "bert":  # the fusion model keeps the text model's encoder, and the BERT weights it started from
        text = MultiModalClassifier.from_pretrained(tmp_path / "text").text_encoder.state_dict()
        fusion = MultiModalClassifier.from_pretrained(tmp_path / "fusion").text_encoder.state_dict()
        assert all(torch.equal(text[name], fusion[name]) for name in text)
        bert = pretrained_bert_state(tiny_bert)
        assert all(torch.equal(bert[name], text[f"model.{name}"]) for name in bert)


def pretrained_bert_state(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder).state_dict()


def test_bag_weights_words_by_their_inverse_document_frequency():
    from sklearn.feature_extraction.text import TfidfVectorizer

    model, processor = text_model("bag")
    texts = [c for c in CAPTIONS if c]
    tokens = processor.tokenize(texts)
    model.text_encoder.fit_token_weights(tokens["input_ids"], tokens["attention_mask"])
    vectorizer = TfidfVectorizer(token_pattern=r"\w+").fit(texts)
    vocab = processor.tokenizer.get_vocab()
    for word, column in vectorizer.vocabulary_.items():
        assert model.text_encoder.token_weights[vocab[word]].item() == pytest.approx(vectorizer.idf_[column])
    # A text's embedding is then the IDF-weighted mean: a word every text has ("a") weighs least.
    assert model.text_encoder.token_weights[vocab["a"]] < model.text_encoder.token_weights[vocab["dusk"]]


def test_the_bag_is_a_linear_model_of_the_text_s_l2_normalised_tf_idf_vector():
    model, processor = text_model("bag")
    tokens = processor.tokenize([c for c in CAPTIONS if c])
    encoder = model.text_encoder.eval()
    encoder.fit_token_weights(tokens["input_ids"], tokens["attention_mask"])
    assert encoder.embedding.weight.shape == (encoder.vocab_size + encoder.buckets, len(CONCEPTS))
    rows = encoder.bag(tokens["input_ids"], tokens["attention_mask"])
    weights = encoder.token_weights[rows] * (rows != encoder.pad_token_id)
    expected = (weights[..., None] * encoder.embedding.weight[rows]).sum(1) / weights.norm(dim=1, keepdim=True)
    torch.testing.assert_close(model.encode_text(**tokens), expected)
    # Text-only, the logits are those scores plus an intercept per concept: nothing else to overfit.
    scores = torch.randn(2, len(CONCEPTS))
    torch.testing.assert_close(model.classify(text_embeds=scores), scores + model.classifier[0].bias)
    assert sum(p.numel() for p in model.classifier.parameters()) == len(CONCEPTS)


def test_the_bag_trains_under_its_l2_penalty_only_while_it_learns():
    model, processor = text_model("bag", bag_l2=0.01)
    batch, labels = processor(text=CAPTIONS), torch.ones(len(CAPTIONS), 3)
    penalty = 0.01 * model.text_encoder.embedding.weight.square().sum()
    model.train()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits, labels)
    torch.testing.assert_close(model(**batch, labels=labels).loss, bce + penalty)
    model.eval()
    torch.testing.assert_close(model(**batch, labels=labels).loss, bce)  # validation loss: no penalty
    model.train()
    model.freeze_encoders(text=True)
    assert model.text_encoder.penalty() == 0.0


def test_the_bag_s_penalty_is_the_tf_idf_regression_s_per_loss_term():
    from mm_classifier.train_options import build_parser, model_config, resolve_defaults

    args = resolve_defaults(build_parser().parse_args(["--text-encoder", "bag"]))
    concepts = ["dog", "beach", "man"]
    # 1 / (2 C), C = 4, against the summed loss: per pair for cross-entropy, per pair and concept for the BCE.
    single = model_config("text", args, concepts, 50, 0, 32, problem_type="single_label_classification",
                          train_pairs=100)
    assert single.bag_l2 == pytest.approx(1 / (2 * 4.0 * 100))
    assert model_config("text", args, concepts, 50, 0, 32, train_pairs=100).bag_l2 == pytest.approx(
        1 / (2 * 4.0 * 100 * 3))
    args = resolve_defaults(build_parser().parse_args(["--text-encoder", "lstm"]))
    assert model_config("text", args, concepts, 50, 0, 32, train_pairs=100).bag_l2 == 0.0


def test_a_bag_saved_before_the_linear_bag_loads_as_it_was(tmp_path):
    model, processor = text_model("bag", bag_pooling="mean")
    model.eval().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["bag_pooling"], config["bag_l2"]  # as a folder of 2026-12-06 has it
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = MultiModalClassifier.from_pretrained(tmp_path).eval()
    assert reloaded.config.bag_pooling == "mean"
    batch = processor(text=CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)
    assert MultiModalConfig(text_encoder_type="bag").bag_pooling == "tfidf"  # a new config: the linear bag


def test_encoders_scale_the_learning_rate_of_their_own_parameters(tiny_bert):
    from mm_classifier.training import optimizer_and_schedule

    bag, _ = text_model("bag")  # the linear bag: its table and the text-only model's intercepts
    optimizer, _ = optimizer_and_schedule(bag, 1e-3, 0.01, steps_per_epoch=10, epochs=1)
    rates = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(bag.text_encoder.embedding.weight)] == pytest.approx(0.1)
    assert rates[id(bag.classifier[0].bias)] == pytest.approx(0.1) and len(rates) == 2
    mean_bag, _ = text_model("bag", bag_pooling="mean")
    optimizer, _ = optimizer_and_schedule(mean_bag, 1e-3, 0.01, steps_per_epoch=10, epochs=1)
    rates = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(mean_bag.text_encoder.embedding.weight)] == pytest.approx(0.1)
    assert rates[id(mean_bag.text_encoder.projection[1].weight)] == pytest.approx(1e-2)
    assert rates[id(mean_bag.classifier[0].weight)] == pytest.approx(1e-3)
    bert, _ = text_model("transformers", tiny_bert, text_trainable_layers=1)
    optimizer, _ = optimizer_and_schedule(bert, 1e-3, 0.01, steps_per_epoch=10, epochs=1)
    rates = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
    layer = next(bert.text_encoder.layers()[-1].parameters())
    assert rates[id(layer)] == pytest.approx(3e-5) and len(rates) == sum(p.requires_grad for p in bert.parameters())


def test_explanations_group_subwords_into_the_words_as_written(tiny_bert):
    from mm_classifier.explain import explain

    model, processor = text_model("transformers", tiny_bert)
    predictor = Predictor(model, processor, device="cpu")
    caption = "A Zebra-dog runs on the beach"
    assert len(processor.tokenize([caption])["input_ids"][0]) > 9  # [CLS], [SEP] and subwords of "zebra"
    words = explain(predictor, None, caption, concepts="dog")["dog"].words
    assert [word for word, _ in words] == ["A", "Zebra", "-", "dog", "runs", "on", "the", "beach"]
    # A word's contribution is the probability lost with all of its subwords hidden.
    tokens = processor.tokenize([caption])
    hidden = tokens["input_ids"].clone()
    hidden[0, 2:7] = processor.tokenizer.unk_token_id  # "zebra": z ##e ##b ##r ##a
    with torch.no_grad():
        probability = torch.sigmoid(model(**tokens).logits[0, 0])
        without = torch.sigmoid(model(input_ids=hidden, attention_mask=tokens["attention_mask"]).logits[0, 0])
    assert words[1][1] == pytest.approx((probability - without).item(), abs=1e-5)


def test_auto_reads_short_captions_with_the_lstm_and_longer_texts_with_the_bag():
    from mm_classifier.text_models import choose_text_encoder

    captions = ["a dog runs on the beach"] * 20
    descriptions = [" ".join(f"word{i}" for i in range(n, n + 40)) for n in range(20)]  # 40 words each
    assert choose_text_encoder("auto", captions)[0] == "lstm"
    chosen, tokenizer = choose_text_encoder("auto", descriptions, min_frequency=1)
    assert chosen == "bag" and len(tokenizer) > 40
    assert choose_text_encoder("lstm", descriptions)[0] == "lstm"  # an explicit choice stands


def test_a_clip_model_lends_its_text_tower_and_pooled_output(tiny_bert, tmp_path):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)  # any tokenizer serves a tiny random CLIP
    text = {"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 64, "eos_token_id": tokenizer.sep_token_id}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    config, pooling = pretrained_text_config(str(tmp_path / "clip"))
    assert config["model_type"] == "clip_text_model" and pooling == "pooler"
    model, processor = text_model("transformers", tmp_path / "clip", text_model_config=config, text_pooling=pooling)
    tower = CLIPTextModel.from_pretrained(tmp_path / "clip").eval()
    tokens = processor.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        expected = tower(**tokens).pooler_output
        torch.testing.assert_close(model.text_encoder.caption_features(**tokens), expected)


def test_a_word_is_hidden_from_the_attention_where_the_unknown_token_ends_the_text(tiny_bert):
    from mm_classifier.explain import _masked_captions

    _, processor = text_model("transformers", tiny_bert)
    processor.tokenizer.unk_token = processor.tokenizer.pad_token  # as CLIP's tokenizer has it: one token for all
    ids, masks, words = _masked_captions(processor, "a dog runs")
    assert words == ["a", "dog", "runs"]
    assert torch.equal(ids, ids[:1].expand_as(ids))  # no token replaced, which would end a CLIP text early
    word_of_token = processor.tokenizer("a dog runs").word_ids()  # None for [CLS] and [SEP]
    assert masks[0].all() and masks[2].tolist() == [int(word != 1) for word in word_of_token]  # "dog" hidden


def test_an_encoder_transformers_cannot_build_and_a_max_length_beyond_the_encoder_are_refused(tiny_bert, tmp_path,
                                                                                                  tiny_folder):
    from transformers import SiglipConfig

    from mm_classifier.pairs import load_training_data

    SiglipConfig().save_pretrained(tmp_path / "siglip")  # its text tower has no AutoModel class
    with pytest.raises(MMClassifierError, match="no model class for its text encoder"):
        pretrained_text_config(str(tmp_path / "siglip"))
    limit = caption_tokenizer(str(tiny_bert), []).model_max_length
    assert limit == 128  # the tiny BERT's max_position_embeddings: its tokenizer was saved without a limit
    with pytest.raises(MMClassifierError, match=f"at most {limit} tokens"):
        load_training_data(str(tiny_folder), split_seed=0, lexicon=None, num_concepts=5, min_votes=2,
                           text_encoder=str(tiny_bert), max_length=limit + 1)
