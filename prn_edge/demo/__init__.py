"""The embedded default: a dataset built from scikit-image's bundled CC0 photos, trained,
exported, inspected and benchmarked end to end with no dataset and no network
(``python -m prn_edge.demo``)."""
