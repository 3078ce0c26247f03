"""The web demo (`t2i serve`) and the streaming core shared with `t2i live`.

    limits.py   validation of every client field, server caps (no gradio)
    stream.py   a generation as an iterator of preview frames (no gradio)
    compose.py  attribute checkboxes -> a caption in the training vocabulary (no gradio)
    ui.py       the Gradio Blocks and the /generate API endpoint
    server.py   `t2i serve` and `create_app` (also used by the Space's app.py)

Importing this package does not import gradio; only ui.py (and server.py when it runs) do.
"""
