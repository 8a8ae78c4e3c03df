"""Finding, grafting and validating the multi-token-prediction (nextn) head."""
