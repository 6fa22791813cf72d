"""Generated from proto/gantry/v1 by generate.py: do not edit."""
