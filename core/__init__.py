"""The foundation every feature stands on: errors, files, GGUF, the qwen35 table, checkpoints, Hub, llama.cpp."""
