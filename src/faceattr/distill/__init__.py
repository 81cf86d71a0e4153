"""Teacher/student distillation (``python src/main.py distill``): see ``distill.command``."""
