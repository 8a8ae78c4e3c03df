"""Library for converting Qwen3.5 checkpoints to GGUF and quantizing them with llama.cpp."""
