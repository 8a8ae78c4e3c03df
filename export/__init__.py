"""Hand GGUFs to Ollama, LM Studio, KoboldCpp and the Hugging Face Hub."""
