"""Per-label precision, recall and F1 with undefined values left out: what the multi-label and single-label
classification modules share (``evaluate`` copies this file beside a module that imports it)."""

import numpy as np


def per_label_scores(names, precision, recall, f1, support) -> tuple[dict, dict, dict]:
    """scikit-learn's per-label arrays (``zero_division=np.nan``) -> per-label results, the macro averages and the
    names of the undefined values.

    A label's precision is undefined when it is never predicted (NaN from scikit-learn); its recall and F1 when it
    has no reference example (support 0). Undefined values are None and left out of the macro averages.

    Returns:
        ``per_label`` (name -> precision, recall, f1, support), ``macro`` (``macro_precision``, ... -> the mean
        over the labels where it is defined, or None) and ``undefined`` (precision, recall, f1 -> names).
    """
    undefined = {"precision": [], "recall": [], "f1": []}
    per_label = {}
    for i, name in enumerate(names):
        has_reference = support[i] > 0
        values = {
            "precision": precision[i],
            "recall": recall[i] if has_reference else np.nan,
            "f1": f1[i] if has_reference else np.nan,
        }
        for key, value in values.items():
            if np.isnan(value):
                undefined[key].append(name)
        per_label[name] = {key: None if np.isnan(value) else float(value) for key, value in values.items()}
        per_label[name]["support"] = int(support[i])
    macro = {}
    for key in undefined:
        defined = [scores[key] for scores in per_label.values() if scores[key] is not None]
        macro[f"macro_{key}"] = float(np.mean(defined)) if defined else None
    return per_label, macro, undefined
