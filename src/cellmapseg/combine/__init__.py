"""Rows of the comparison derived from kept probabilities, without running a network again:
tuned thresholds (a variant of a model) and ensembles (mean or per-class member), chosen on
part of the validation crops and scored on the others (cross-fitting, `folds`).

`sweep` scores a crop's probabilities at every candidate threshold, `choose` picks each class's
threshold (and member) per fold and for the submission, `derive` writes the predictions of a
crop (validation or test) from the members' kept probabilities by those choices.
"""
