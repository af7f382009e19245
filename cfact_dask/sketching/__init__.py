"""Sketching: the random operators ``P`` (one kind per entry of the registry in
:mod:`.operators`) and the one-pass, chunking-invariant sketch ``P X`` of a chunked input."""

from ._sketch import Sketch, sketch, sketch_with
from .operators import KINDS, SketchOperator, make_operator

__all__ = ["KINDS", "Sketch", "SketchOperator", "make_operator", "sketch",
           "sketch_with"]
