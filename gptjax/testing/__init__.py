"""Test and benchmark support shipped with the library (not used by any verb): planted-duplicate corpora."""
