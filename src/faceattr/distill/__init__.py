"""Teacher/student distillation (``python src/main.py distill``; floor 7, above training): see
``distill.command``."""
