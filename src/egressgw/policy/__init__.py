"""Egress gateway policies: parsing, validation, inventory, and compiling to rules."""
