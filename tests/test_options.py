"""Flags made from MultiModalConfig's fields: names, types, defaults and help text come from the config."""

import argparse

import pytest

from mm_classifier import MultiModalConfig
from mm_classifier.options import HelpFormatter, config_argument, default_text, field_docs, field_help


def test_every_field_of_the_config_has_a_docstring_entry():
    docs = field_docs()
    # custom_pipelines is transformers' registration, not a setting; id2label is documented from the base class.
    assert set(MultiModalConfig.__annotations__) - {"custom_pipelines"} <= set(docs)
    # An entry that names several fields is each one's, continuation lines included.
    assert docs["lstm_hidden_size"] == docs["lstm_num_layers"] == "the lstm encoder."
    assert docs["image_std"].endswith("(it must match the backbone's weights).")
    # The help is the entry's first sentence, as plain text.
    assert field_help("max_length") == "captions are cut to this many tokens"
    assert "``" not in field_help("fusion_type") and '"concat"' in field_help("fusion_type")


def test_flags_take_name_type_nargs_and_default_from_the_field():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    actions = {name: config_argument(parser, name) for name in ("image_size", "image_mean", "dropout",
                                                                 "image_local_projection", "backbone")}
    defaults = parser.parse_args([])
    assert (defaults.image_size, defaults.dropout, defaults.backbone) == (224, 0.3, "mobilenetv2_100")
    assert defaults.image_mean == [0.485, 0.456, 0.406] and defaults.image_local_projection is False
    given = parser.parse_args(["--image-size", "96", "--image-mean", "0.5", "0.25", "--dropout", "0.1",
                               "--image-local-projection"])
    assert (given.image_size, given.image_mean, given.dropout, given.image_local_projection) == (96, [0.5, 0.25],
                                                                                                 0.1, True)
    assert parser.parse_args(["--no-image-local-projection"]).image_local_projection is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--image-size", "large"])
    assert actions["image_size"].help == "side of the square input image, in pixels (default: 224)"
    assert default_text(actions["image_mean"]) == "0.485 0.456 0.406"
    assert " ".join(parser.format_help().split()).count("(default: False)") == 1  # the switch's state, once


def test_overrides_a_sample_default_and_a_default_the_data_decides():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    size = config_argument(parser, "image_size", sample=64)
    length = config_argument(parser, "max_length", default=None, default_help="enough for 95% of the texts")
    blocks = config_argument(parser, "image_feature_blocks", type=int, nargs="+")
    assert vars(parser.parse_args([])) == {"image_size": None, "max_length": None, "image_feature_blocks": None}
    assert parser.parse_args(["--image-feature-blocks", "5", "-1"]).image_feature_blocks == [5, -1]
    assert default_text(size) == "224; the sample: 64"
    assert default_text(length) == "enough for 95% of the texts"
    assert default_text(blocks) is None
    assert "95% of the texts" in " ".join(parser.format_help().split())  # a "%" in the help is escaped for argparse


def test_the_help_formatter_shows_each_default_once():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--labels", help="a file (default: the training labels)")
    parser.add_argument("--weights", help="local weights")
    parser.add_argument("--skip-report", action="store_true", help="no report")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True, help="cache features")
    text = " ".join(parser.format_help().split())
    assert "per process (default: 64)" in text and "a file (default: the training labels)" in text
    assert "local weights --skip-report no report --cache, --no-cache cache features (default: True)" in text
    assert text.count("(default:") == 3
