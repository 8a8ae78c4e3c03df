"""The GGUF file and its views: the streaming writer and header reader (`file`), the one header
view (`view`), the vision projector's header (`mmproj`), and llama.cpp's type tables (`ftypes`).
Knows the format, not the model: nothing here imports core/model."""
