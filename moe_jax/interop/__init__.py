"""Interoperability with other tools' checkpoints (Hugging Face safetensors): see hf.py."""
