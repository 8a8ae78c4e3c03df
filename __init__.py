"""qwythos: Qwythos-9B from Hugging Face safetensors to fast local llama.cpp inference."""

__version__ = "0.1.0"
