"""Rendering of tables and documents for people and programs."""
