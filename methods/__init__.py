"""Prompt-learning methods, one file each, plus the pieces they share."""
