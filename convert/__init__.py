"""HF safetensors -> GGUF: the text model (text.py) and the vision projector (mmproj.py)."""
