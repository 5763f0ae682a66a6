"""Training on Easel's models: textual inversion (textual_inversion.py), a job kind like any other."""
