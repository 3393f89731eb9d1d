"""Data curation: sources, extraction, de-duplication, filters, mixing."""
