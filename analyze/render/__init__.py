"""Renderers of a report or a comparison that are more than a few lines: one module per format.

    svg     a figure family drawn as inline SVG text (text kept as text), evidence steps marked
    html    one self-contained page (no network): `report_html`, `compare_html`
    compact the narrow/piped table layout (<= 80 columns) of `moh report` and `moh compare`
"""
