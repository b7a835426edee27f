"""SAM studio's Gradio app: a thin layer over sam_core and visualization."""
