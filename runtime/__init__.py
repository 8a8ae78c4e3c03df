"""llama-cpp-python handles, the MTP speculative loop, sampling, chat and bench."""
