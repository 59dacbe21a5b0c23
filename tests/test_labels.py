import json

import pytest

from mm_classifier import MMClassifierError, leave_one_out_labels, leave_one_out_votes, load_concept_file, mine_concepts
from mm_classifier.labels import concepts_in, words_of


def test_plurals_and_synonyms_fold_into_one_concept():
    assert concepts_in("Two puppies and a dog play") == {"dog"}
    assert concepts_in("Kids and children in a t-shirt") == {"child", "shirt"}
    assert concepts_in("A lady walks") == {"woman"}


def test_function_words_verbs_and_colours_are_not_concepts():
    assert concepts_in("A red and blue thing is running in the air") == set()


def test_words_of_splits_hyphenated_words():
    assert {"t-shirt", "t", "shirt"} <= words_of("A T-shirt")


def test_leave_one_out_labels_use_only_the_other_captions():
    captions = [
        "A dog on the beach",      # 0: dog, beach
        "A dog runs",              # 1: dog
        "A puppy in the sand",     # 2: dog, beach
        "A man with his dog",      # 3: man, dog
        "Someone outside",         # 4: nothing
    ]
    concepts = ["dog", "beach", "man"]
    labels = leave_one_out_labels(captions, concepts, min_votes=2)
    # dog: named by 4 captions, so >= 2 among any other four.
    assert all(0 in row for row in labels)
    # beach: named by captions 0 and 2 only; for pair 0 the others hold one mention -> no label.
    assert 1 not in labels[0] and 1 not in labels[2]
    assert 1 in labels[1] and 1 in labels[3] and 1 in labels[4]
    # man: a single mention never reaches 2 votes.
    assert all(2 not in row for row in labels)


def test_leave_one_out_votes_count_the_other_captions_and_decide_the_labels():
    captions = ["A dog on the beach", "A dog runs", "A puppy in the sand", "A man with his dog", "Someone outside"]
    concepts = ["dog", "beach", "man", "snow"]
    votes = leave_one_out_votes(captions, concepts)
    assert votes == [[3, 1, 1, 0], [3, 2, 1, 0], [3, 1, 1, 0], [3, 2, 0, 0], [4, 2, 1, 0]]
    for min_votes in (1, 2, 3, 4):
        assert leave_one_out_labels(captions, concepts, min_votes) == [
            [i for i, v in enumerate(row) if v >= min_votes] for row in votes
        ]
    with pytest.raises(MMClassifierError, match="min_votes must be at least 1, got 0"):
        leave_one_out_labels(captions, concepts, 0)


def test_mine_concepts_ranks_by_photos_with_enough_votes():
    photos = [["a dog", "a dog", "a man"], ["dogs", "a puppy", "the water"], ["a man", "a guy", "water"]]
    assert mine_concepts(photos, num_concepts=5, min_votes=2) == [("dog", 2), ("man", 1)]
    assert mine_concepts(photos, num_concepts=1) == [("dog", 2)]


def test_concept_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps({"Kite": ["kites"], "sky": []}))
    assert load_concept_file(path) == {"kite": ["kite", "kites"], "sky": ["sky"]}
    with pytest.raises(MMClassifierError, match="does not exist"):
        load_concept_file(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(MMClassifierError, match="not valid JSON"):
        load_concept_file(path)
    path.write_text(json.dumps({"kite": "kites"}))
    with pytest.raises(MMClassifierError, match="list of strings"):
        load_concept_file(path)
