"""Easel's self-trained demo model: procedurally drawn shape scenes (`scenes`), the
from-scratch training recipe (`train`), a model-free picture reader (`shape_checker`)
and the meaning check (`evaluate`)."""
