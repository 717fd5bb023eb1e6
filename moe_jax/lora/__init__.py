"""LoRA and QLoRA fine-tuning: adapters as a separate params tree (adapters.py), NF4
base quantisation (nf4.py, qlora.py), the adapter-only train step (step.py) and the
QLoRA memory plan (memory.py)."""
