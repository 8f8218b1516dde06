"""Compliance records: the archive's hash chain, its signed checkpoints and their verification."""
