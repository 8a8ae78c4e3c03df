"""HF safetensors -> GGUF: the text model (and, later, the vision projector)."""
