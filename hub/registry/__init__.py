"""Model registry: import and conversion, chunking, signed releases (TUF), test models."""
