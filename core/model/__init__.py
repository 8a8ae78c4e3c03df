"""The model: the qwen35 architecture table (`qwen35`, `arch`, `structure`), Hugging Face
checkpoints and tokenizers (`checkpoint`, `vocab`), the chat template, the release's facts
(`release`) and what the exporters read of a file (`summary`)."""
