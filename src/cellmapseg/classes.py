"""The 14 CellMap organelle classes: channel c holds label value c + 1 (spec §3.4)."""

CLASS_NAMES: tuple[str, ...] = (
    "ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "golgi_mem", "golgi_lum",
    "ves_mem", "ves_lum", "endo_mem", "endo_lum", "er_mem", "er_lum", "nuc",
)
NUM_CLASSES = len(CLASS_NAMES)
MAX_LABEL = NUM_CLASSES  # label values run 0 (unknown/background) .. 14

# Classes the challenge scores as instances; every other class is semantic.
INSTANCE_CLASSES: tuple[str, ...] = ("nuc",)

# Crops (of 277) in which each class is annotated, from the spec's §3.4 table.
ANNOTATED_CROPS: dict[str, int] = {
    "ecs": 155, "pm": 125, "mito_mem": 133, "mito_lum": 133, "mito_ribo": 62,
    "golgi_mem": 19, "golgi_lum": 19, "ves_mem": 177, "ves_lum": 178, "endo_mem": 170,
    "endo_lum": 170, "er_mem": 185, "er_lum": 186, "nuc": 78,
}
TOTAL_CROPS = 277


def annotation_frequency(name: str) -> float:
    """Fraction of the real crops in which class `name` is annotated."""
    return ANNOTATED_CROPS[name] / TOTAL_CROPS
