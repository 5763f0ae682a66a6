"""The Gradio web UI: a thin skin that turns widget values into typed requests and shows results."""
