"""Conversations and their storage (no Qt, no torch)."""
