import os

# Set before lerobot (and huggingface_hub) are imported by any data module: lerobot falls back to the
# hub for missing local files, and the AV1 encoder prints its whole configuration for every episode.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SVT_LOG", "1")
