"""The Gradio user interface: layout and wiring over one Engine and one Settings object."""
