"""The embedded synthetic CellMap-like dataset (plan -> geometry -> render -> NIfTI files).

A package of its own: it writes the files that the data layer then reads like any user's data,
and uses none of that layer.
"""
