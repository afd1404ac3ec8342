"""A third-party SAE for saebench-vision: a ReLU SAE whose decoder is W_enc^T."""
