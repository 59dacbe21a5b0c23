"""Caption -> concept labels: the concept lexicon, concept mining and leave-one-out labels; and label files, which name
the label set of a data set whose photos come with labels.

Pure Python (no torch, no datasets) so it can be read, tested and reused on its own.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from .errors import MMClassifierError

# Visual nouns seen in Flickr8k captions, each with the words that name it (plurals and synonyms fold
# into one concept). Deliberately absent: function words, verbs, colours, and nouns that name no visible
# thing ("air", "front", "background", "picture", "side"). Ranked on real training captions, the 20 most
# frequent of these form the default vocabulary (`python -m mm_classifier.data` prints them).
CONCEPT_LEXICON: dict[str, list[str]] = {
    "man": ["man", "men", "guy", "guys", "gentleman", "gentlemen"],
    "woman": ["woman", "women", "lady", "ladies"],
    "child": ["child", "children", "kid", "kids", "toddler", "toddlers", "baby", "babies", "infant"],
    "boy": ["boy", "boys"],
    "girl": ["girl", "girls"],
    "people": ["people", "crowd", "crowds", "audience", "spectators", "persons"],
    "dog": ["dog", "dogs", "puppy", "puppies", "pup", "pups"],
    "cat": ["cat", "cats", "kitten", "kittens"],
    "horse": ["horse", "horses", "pony", "ponies"],
    "bird": ["bird", "birds", "duck", "ducks", "seagull", "seagulls"],
    "water": ["water", "ocean", "sea", "lake", "river", "pool", "pond", "stream", "waves", "wave", "surf", "creek"],
    "grass": ["grass", "grassy", "lawn"],
    "field": ["field", "fields", "meadow"],
    "snow": ["snow", "snowy", "snowbank"],
    "beach": ["beach", "beaches", "sand", "sandy", "shore"],
    "street": ["street", "streets", "road", "roads", "sidewalk", "crosswalk", "alley"],
    "mountain": ["mountain", "mountains", "hill", "hills", "hillside", "cliff", "cliffs"],
    "rock": ["rock", "rocks", "rocky", "boulder", "boulders"],
    "tree": ["tree", "trees", "woods", "forest"],
    "building": ["building", "buildings", "house", "houses", "skyscraper"],
    "ball": ["ball", "balls", "football", "basketball", "volleyball"],
    "bike": ["bike", "bikes", "bicycle", "bicycles", "bicyclist", "cyclist", "biker", "bmx"],
    "car": ["car", "cars", "truck", "trucks", "vehicle", "jeep", "bus"],
    "boat": ["boat", "boats", "canoe", "kayak", "raft", "sailboat"],
    "skateboard": ["skateboard", "skateboards", "skateboarder", "skateboarders", "skater", "skateboarding"],
    "shirt": ["shirt", "shirts", "t-shirt", "tshirt"],
    "hat": ["hat", "hats", "cap", "caps"],
    "helmet": ["helmet", "helmets"],
    "jacket": ["jacket", "jackets", "coat", "coats"],
    "dress": ["dress", "dresses", "skirt"],
    "toy": ["toy", "toys"],
    "stick": ["stick", "sticks"],
    "fence": ["fence", "fences"],
    "wall": ["wall", "walls"],
    "park": ["park", "playground"],
    "camera": ["camera", "cameras"],
    "uniform": ["uniform", "uniforms", "jersey", "jerseys"],
    "bench": ["bench", "benches"],
}

DEFAULT_NUM_CONCEPTS = 20
DEFAULT_MIN_VOTES = 2

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


class ConceptFileError(MMClassifierError):
    """A concept file or concept mapping that cannot be used."""


def words_of(caption: str) -> set[str]:
    """Lower-cased words of a caption; hyphenated words also count as their parts ("t-shirt" -> shirt)."""
    words: set[str] = set()
    for token in _WORD.findall(caption.lower()):
        words.add(token)
        if "-" in token:
            words.update(token.split("-"))
    return words


def _word_index(lexicon: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for concept, words in lexicon.items():
        for word in {concept, *words}:
            index.setdefault(word.lower(), []).append(concept)
    return index


def concepts_in(caption: str, lexicon: Mapping[str, Sequence[str]] = CONCEPT_LEXICON) -> set[str]:
    """The concepts a single caption mentions."""
    index = _word_index(lexicon)
    return {concept for word in words_of(caption) for concept in index.get(word, ())}


def photo_concept_votes(
    captions: Sequence[str], lexicon: Mapping[str, Sequence[str]] = CONCEPT_LEXICON
) -> Counter:
    """How many of a photo's captions mention each concept."""
    index = _word_index(lexicon)
    votes: Counter = Counter()
    for caption in captions:
        votes.update({c for word in words_of(caption) for c in index.get(word, ())})
    return votes


def mine_concepts(
    photo_captions: Iterable[Sequence[str]],
    num_concepts: int = DEFAULT_NUM_CONCEPTS,
    min_votes: int = DEFAULT_MIN_VOTES,
    lexicon: Mapping[str, Sequence[str]] = CONCEPT_LEXICON,
) -> list[tuple[str, int]]:
    """Rank lexicon concepts by the number of photos that have them (>= ``min_votes`` captions).

    Args:
        photo_captions: one list of captions per photo; pass the training split only.
        num_concepts: how many of the most frequent concepts to keep.
        min_votes: how many captions of a photo must mention a concept for the photo to have it.

    Returns:
        ``[(concept, number_of_photos), ...]``, most frequent first; ties broken by name. Concepts that no
        photo has are left out, so the list may be shorter than ``num_concepts``.
    """
    counts: Counter = Counter()
    for captions in photo_captions:
        votes = photo_concept_votes(captions, lexicon)
        counts.update(c for c, v in votes.items() if v >= min_votes)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:num_concepts]


def leave_one_out_votes(
    captions: Sequence[str],
    concepts: Sequence[str],
    lexicon: Mapping[str, Sequence[str]] = CONCEPT_LEXICON,
) -> list[list[int]]:
    """For each (photo, caption i) pair, how many of the photo's *other* captions name each concept.

    Returns:
        One list per caption of ``len(concepts)`` counts, in the order of ``concepts``.
    """
    index = _word_index({c: lexicon.get(c, [c]) for c in concepts})
    position = {c: i for i, c in enumerate(concepts)}
    mentioned = [{c for w in words_of(cap) for c in index.get(w, ())} for cap in captions]
    total = Counter(c for m in mentioned for c in m)
    votes = []
    for own in mentioned:
        row = [0] * len(concepts)
        for c, v in total.items():
            row[position[c]] = v - (1 if c in own else 0)
        votes.append(row)
    return votes


def leave_one_out_labels(
    captions: Sequence[str],
    concepts: Sequence[str],
    min_votes: int = DEFAULT_MIN_VOTES,
    lexicon: Mapping[str, Sequence[str]] = CONCEPT_LEXICON,
) -> list[list[int]]:
    """Labels for each (photo, caption i) pair, decided by the photo's *other* captions.

    A model that reads caption i must never see the caption that decided its own labels (that would make
    the task keyword spotting), so pair i's concepts are those that at least ``min_votes`` of the remaining
    captions mention.

    Returns:
        One sorted list of concept indices (into ``concepts``) per caption.
    """
    return labels_from_votes(leave_one_out_votes(captions, concepts, lexicon), min_votes)


def labels_from_votes(votes: Sequence[Sequence[int]], min_votes: int = DEFAULT_MIN_VOTES) -> list[list[int]]:
    """Per pair, the indices of the concepts that at least ``min_votes`` of its other captions name."""
    if min_votes < 1:
        raise MMClassifierError(f"min_votes must be at least 1, got {min_votes}.")
    return [[i for i, v in enumerate(row) if v >= min_votes] for row in votes]


def load_concept_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a user's concept file: JSON ``{"concept": ["word", ...], ...}``.

    The concept name itself always counts as one of its words.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConceptFileError(f"Concept file {path!s} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConceptFileError(f"Concept file {path!s} is not valid JSON: {err}") from None
    return validate_lexicon(raw, source=str(path))


def validate_lexicon(raw: object, source: str = "concept mapping") -> dict[str, list[str]]:
    """Check a concept -> words mapping and normalise it to lower-case lists."""
    if not isinstance(raw, dict) or not raw:
        raise ConceptFileError(f"{source} must be a non-empty JSON object mapping concept -> list of words.")
    lexicon: dict[str, list[str]] = {}
    for concept, words in raw.items():
        if not isinstance(concept, str) or not concept.strip():
            raise ConceptFileError(f"{source}: concept names must be non-empty strings, got {concept!r}.")
        if isinstance(words, str) or not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ConceptFileError(f"{source}: the words of concept {concept!r} must be a list of strings.")
        name = concept.strip().lower()
        lexicon[name] = sorted({name, *(w.strip().lower() for w in words if w.strip())})
    return lexicon


def load_label_file(path: str | os.PathLike) -> list[str]:
    """Read a label set: a JSON list of label names, or a text file with one name per line. Order is label order."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise ConceptFileError(f"Label file {path!s} does not exist.") from None
    except UnicodeDecodeError as err:
        raise ConceptFileError(f"Label file {path!s} is not text: {err}") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConceptFileError(f"Label file {path!s} is not valid JSON: {err}") from None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ConceptFileError(f"Label file {path!s} must hold a JSON list of label names.")
    else:
        names = text.splitlines()
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise ConceptFileError(f"Label file {path!s} names no label.")
    if len(set(names)) != len(names):
        duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
        raise ConceptFileError(f"Label file {path!s} names {duplicated} more than once.")
    return names
