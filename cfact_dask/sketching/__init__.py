"""Sketching: the random operators ``P`` (one kind per entry of :data:`SKETCH_KINDS` in
:mod:`.operators`) and the one-pass, chunking-invariant sketch ``P X`` of a chunked input."""

from ._sketch import Sketch, sketch, sketch_with
from .operators import KINDS, SKETCH_KINDS, SketchKind, SketchOperator, make_operator

__all__ = ["KINDS", "SKETCH_KINDS", "Sketch", "SketchKind", "SketchOperator", "make_operator",
           "sketch", "sketch_with"]
