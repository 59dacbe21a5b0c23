"""Text encoders' training cost: a bag epoch against an lstm epoch (text-only, same pairs), and how fast a frozen
transformers encoder's caption vectors are computed and cached.

    python benchmarks/text_encoders.py --dataset PATH/TO/flickr8k [--text-encoder PATH/TO/all-MiniLM-L6-v2]

Run it alone: two torch processes on two cores slow each other several times over.
"""

import argparse
import math
import os
import tempfile
import time

import common
import torch


def epoch_seconds(encoder: str, data, batch_size: int = 64) -> float:
    """Seconds of one text-only training epoch over the training pairs (tokens already in the pair table)."""
    from mm_classifier import MultiModalClassifier, MultiModalConfig
    from mm_classifier.training import optimizer_and_schedule

    pairs = data.splits["train"].pairs
    config = MultiModalConfig(modality="text", text_encoder_type=encoder, vocab_size=len(data.tokenizer),
                              pad_token_id=data.tokenizer.pad_token_id, max_length=data.max_length,
                              id2label=dict(enumerate(data.concepts)), bag_l2=1e-6)  # with its penalty's cost
    torch.manual_seed(0)
    model = MultiModalClassifier(config).train()
    optimizer, _ = optimizer_and_schedule(model, 1e-3, 0.01, math.ceil(len(pairs) / batch_size), 1)

    def step(rows):
        length = max(1, int(pairs.attention_mask[rows].sum(1).max()))  # as the collator trims a batch
        loss = model(input_ids=pairs.input_ids[rows, :length], attention_mask=pairs.attention_mask[rows, :length],
                     labels=pairs.labels[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(slice(0, batch_size))  # warm-up, untimed
    started = time.perf_counter()
    for start in range(0, len(pairs), batch_size):
        step(slice(start, start + batch_size))
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--text-encoder", help="a transformers encoder folder or hub id: time its caption cache")
    args = parser.parse_args()

    from mm_classifier import CONCEPT_LEXICON
    from mm_classifier.pairs import load_training_data

    def load(encoder):
        return load_training_data(args.dataset, split_seed=0, lexicon=CONCEPT_LEXICON, num_concepts=20, min_votes=2,
                                  text_encoder=encoder)

    rows = []
    words = load("lstm")
    pairs = len(words.splits["train"].pairs)
    lstm = epoch_seconds("lstm", words)
    bag = epoch_seconds("bag", load("bag"))
    rows += [(f"lstm epoch, {pairs} pairs (max_length {words.max_length})", f"{lstm:.1f} s"),
             (f"bag epoch, {pairs} pairs", f"{bag:.1f} s")]
    key = f"a bag epoch takes {bag / lstm:.2f}x an lstm epoch's time"
    if args.text_encoder:
        from mm_classifier import MultiModalClassifier, MultiModalConfig
        from mm_classifier.features import cached_caption_features
        from mm_classifier.text_models import pretrained_text_config

        data = load(args.text_encoder)
        text_config, pooling = pretrained_text_config(args.text_encoder)
        model = MultiModalClassifier(MultiModalConfig(
            modality="text", text_encoder_type="transformers", text_model_config=text_config, text_pooling=pooling,
            vocab_size=len(data.tokenizer), pad_token_id=data.tokenizer.pad_token_id, max_length=data.max_length,
            id2label=dict(enumerate(data.concepts))))
        model.text_encoder.load_pretrained(args.text_encoder)
        captions = data.splits["train"].pairs
        with tempfile.TemporaryDirectory() as cache:  # a cold cache
            os.environ["MM_CLASSIFIER_CACHE"] = cache
            _, cold = common.timed(cached_caption_features, model, captions.input_ids, captions.attention_mask)
            _, warm = common.timed(cached_caption_features, model, captions.input_ids, captions.attention_mask)
        rows += [(f"{os.path.basename(args.text_encoder.rstrip('/'))}: caption vectors of {len(captions)} training "
                  f"captions (max_length {data.max_length}), computed and cached", f"{cold:.1f} s, "
                  f"{len(captions) / cold:.0f} captions/s"), ("the same, read from the cache", f"{warm:.2f} s")]
        key += f"; frozen encoder caches {len(captions) / cold:.0f} captions/s"
    print(f"\n{args.dataset} on {common.machine()}\n")
    print(common.table(["measure", "value"], rows))
    print(f"KEY RATIO: {key}")


if __name__ == "__main__":
    main()
