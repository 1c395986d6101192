"""One file per baseline model; each registers its variants with ``@register_model``."""
